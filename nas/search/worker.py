"""A search worker: claim a waiting trial, evaluate it, tell the study; until the budget is used up.

Every worker, local or on another machine, runs this same loop against the shared storage. The
controller is rebuilt in each worker from the study's stored config (all controllers are Optuna
samplers that read the study's history), so workers need no other coordination.

Failures that are not the cell's: an error of the machine (full disk, I/O error, no permission,
read-only filesystem, quota; `infrastructure_error`) while a trial runs sends that trial back to the
study to be retried with the same cell, and stops the worker with WorkerFailed (one line: which
worker, why). A trial finished meanwhile by another process (reaped as lost) is a logged event: this
worker drops its result and goes on.

    python -m nas.search.worker --study NAME [--storage URL] [--out-dir DIR] [--device D] [--threads N]
                                [--index I] [--no-announce]

It logs to stderr, one record a line ("worker I: LEVEL logger: message"): a line per finished trial
(unless --no-announce) and a long training's progress; nas-search relays these lines (`relay`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from nas.config import SearchApp, StorageConfig, search_app
from nas.search import optuna_adapter as adapter
from nas.search.objective import Objective, TrialFailed
from nas.search.results import best_so_far, trial_line
from nas.search.storage import (
    Heartbeat,
    check_storage,
    pop_trial,
    reap_lost,
    release,
    replace_if_free,
    this_worker,
)
from nas.search.study import join_study, make_pruner
from nas.trials import Outcome, TrialRecord, mark

log = logging.getLogger("nas.search")

# Errors of the machine, not of the cell being trained.
_INFRA = {errno.ENOSPC, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS} | (
    {errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
# torch.save on a full disk raises RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
# with "basic_ios::clear: iostream error" as its context, not an OSError.
_TORCH_WRITE = ("iostream error", "file write failed", "unexpected pos")


class WorkerFailed(RuntimeError):
    """A worker stopped before the study's budget was used up; the one-line message says which and
    why. The study keeps every trial that finished: rerunning the same command resumes it."""


def infrastructure_error(e: BaseException | None) -> str | None:
    """The one-line reason when `e`, or an exception that caused it, is the machine's fault (full
    disk, I/O error, no permission, read-only filesystem, quota), else None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _INFRA:
            where = f" ({e.filename})" if e.filename else ""
            return f"{errno.errorcode[e.errno]}: {e.strerror}{where}"
        if isinstance(e, RuntimeError) and any(s in str(e) for s in _TORCH_WRITE):
            return f"cannot write a file (disk full?): {str(e).strip().splitlines()[0]}"
        e = e.__cause__ or e.__context__
    return None


@dataclass(frozen=True)
class WorkerSummary:
    trials: int
    seconds: float


def local_workers(workers: int, workers_per_device: int | None, device: str) -> int:
    """How many worker processes a machine runs: `workers`, or with `workers_per_device` = k, k per
    device the workers would use (pin_device: worker i on GPU i mod n_gpus), k on the CPU."""
    if workers_per_device is None:
        return workers
    import torch

    uses_gpus = device in ("auto", "cuda") and torch.cuda.is_available()
    return workers_per_device * (torch.cuda.device_count() if uses_gpus else 1)


def pin_device(device: str, threads: int | None, index: int = 0) -> str:
    """Choose this worker's device (GPU index mod n_gpus under 'auto') and CPU threads."""
    import torch

    if device == "auto":
        device = f"cuda:{index % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    return device


def build_objective(app: SearchApp | Mapping[str, Any], device: str, index: int = 0) -> tuple[Objective, Any]:
    """The trial objective and the controller (sampler) of a search config (a SearchApp, or the plain
    form stored with the study), for the worker numbered `index`: each worker's sampler gets its own
    seed (the search's seed for worker 0), since samplers that draw from a process-wide stream
    (random, TPE) would otherwise hand every worker the same cells in the same order."""
    from nas.data import load_corpus
    from nas.search.samplers import is_multi_objective, make_sampler
    from nas.search_spaces import open_space

    app = search_app(app)
    space = open_space(app.search_space)
    trainer = replace(app.trainer, device=device, progress=False)
    corpus = load_corpus(app.data.path, app.data.cache_dir, app.data.format)
    seed = app.seed if index == 0 else int(np.random.SeedSequence([app.seed, index]).generate_state(1)[0])
    sampler = make_sampler(app.controller.name, seed=seed, **sampler_options(app, space))
    multi = is_multi_objective(app.controller.name)
    grace = app.storage.grace_period
    return Objective(space.sample, trainer, corpus, app.seed, multi_objective=multi,
                     trials_dir=Path(app.out_dir) / "trials", reap=lambda study: reap_lost(study, grace)), sampler


def sampler_options(app: SearchApp, space: Any) -> dict[str, Any]:
    """The controller's options as the search builds it: evolution starts from `space`'s reference
    cells unless seed_params are given (seed_cells become seed_params before the study is made:
    nas.search.run.with_seed_params)."""
    options = dict(app.controller.options)
    if app.controller.name == "evolution" and "seed_params" not in options:
        options["seed_params"] = list(space.known.values())
    return options


def pruner_of(app: SearchApp) -> optuna.pruners.BasePruner:
    """The search's pruner (pruner.*), on the trainer's evaluation steps."""

    return make_pruner(app.pruner, app.trainer.eval_every, app.trainer.steps)


def trial_logger(study: optuna.Study, app: SearchApp, announce: bool = True):
    """The on_trial hook that logs each finished trial to MLflow (a no-op when tracking is off) and,
    with `announce`, its progress line (results.trial_line) on logger nas.search. A launcher that
    announces the trials itself (nas-search, by polling the study) passes announce=False."""
    from nas.tracking import Tracker

    tracker = Tracker.from_config(app)

    def on_trial(t) -> None:
        tracker.log_trial(study, t, app)
        if announce:
            log.info(trial_line(t, best_so_far(study.get_trials(deepcopy=False))))

    return on_trial


def run_trials(study: optuna.Study, objective: Objective, storage: StorageConfig | Mapping[str, Any],
               on_trial=None) -> WorkerSummary:
    """The worker loop. `on_trial(frozen_trial)` is called after each finished trial; `storage` gives
    the heartbeat interval and grace period (a StorageConfig, or a mapping of those two).

    Raises StudyError for bad storage settings (check_storage) and WorkerFailed on an error of the
    machine, after handing the trial in progress back to the study for a retry."""
    check_storage(storage)
    if isinstance(storage, Mapping):
        storage = StorageConfig(heartbeat_interval=storage["heartbeat_interval"],
                                grace_period=storage["grace_period"])
    start, done = time.perf_counter(), 0
    while True:
        trial = None
        try:
            reap_lost(study, storage.grace_period)
            trial = pop_trial(study)
            if trial is None:
                break
            if _run_and_tell(study, objective, trial, storage.heartbeat_interval):
                done += 1
                finished = adapter.fetch(study, trial)
                replace_if_free(study, finished)
                if on_trial is not None:
                    on_trial(finished)
        except Exception as e:
            reason = infrastructure_error(e)
            if reason is None:
                raise
            raise _stopped(study, trial, reason) from e
    return WorkerSummary(done, time.perf_counter() - start)


def _run_and_tell(study: optuna.Study, objective: Objective, trial: optuna.Trial, interval: float) -> bool:
    """Evaluate and tell one trial. False when another process finished it meanwhile (reaped as lost
    by a reaper that thought this worker dead): logged, and this result dropped, as its retry is
    already enqueued and evaluates the same cell."""
    try:
        with Heartbeat(study, adapter.trial_id(trial), interval) as beat:
            state, values = _run_one(objective, trial)
        taken = beat.taken or adapter.fetch(study, trial).state.is_finished()
    except optuna.exceptions.UpdateFinishedTrialError:
        taken = True
    if taken:
        t = TrialRecord.of(adapter.fetch(study, trial))
        log.warning("trial %d was finished by another process while this worker ran it (%s: %s); its "
                    "result here is dropped", trial.number, t.word, t.reason or "no reason recorded")
        return False
    study.tell(trial, values, state=state, skip_if_finished=True)  # a reap in between: dropped as above
    return True


def _stopped(study: optuna.Study, trial: optuna.Trial | None, reason: str) -> WorkerFailed:
    """The error that stops this worker; the trial it held (if still running) goes back for a retry."""
    note = ""
    if trial is not None:
        try:
            t = adapter.fetch(study, trial)
            if t.state == TrialState.RUNNING and release(study, t, f"infrastructure error: {reason}"):
                note = f"; trial {t.number} will be retried with the same cell"
        except Exception as e:  # noqa: BLE001 - the storage may sit on the failing disk too
            note = f"; trial {trial.number} is retried once a rerun finds this worker gone ({type(e).__name__})"
    return WorkerFailed(f"worker {this_worker()} stopped: {reason}{note}; fix the cause and rerun the same "
                        "command to resume the study")


def _run_one(objective: Objective, trial: optuna.Trial):
    try:
        value = objective(trial)
        return TrialState.COMPLETE, value
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except TrialFailed as e:
        mark(trial, Outcome(e.state), str(e))
        return TrialState.FAIL, None
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # reaped while running: not the cell's fault (see _run_and_tell)
    except Exception as e:
        if infrastructure_error(e) is not None:
            raise  # the machine's fault: the trial is retried (see run_trials)
        log.exception("trial %d failed", trial.number)
        mark(trial, Outcome.ERROR, f"{type(e).__name__}: {e}")
        return TrialState.FAIL, None


# How a worker process writes its log records to stderr, and how LocalWorker reads them back.
_RECORD_FORMAT = "worker %(index)d: %(levelname)s %(name)s: %(message)s"
_RECORD = re.compile(r"worker \d+: (DEBUG|INFO|WARNING|ERROR|CRITICAL) (nas(?:\.\w+)*): (.*)")


def relay(index: int, line: str, level: int = logging.WARNING) -> int:
    """Log one stderr line of worker `index` in this process: a record of the worker's (see
    _RECORD_FORMAT) on its own logger and level, prefixed 'worker N: '; any other line (a traceback's,
    a message printed by Python or a library) on nas.search.worker at the level of the record it may
    continue (`level`), but at least WARNING, so that no such line is filtered out. Returns the level
    for the next line."""
    match = _RECORD.fullmatch(line)
    if match:
        level = logging.getLevelName(match[1])
        logging.getLogger(match[2]).log(level, "worker %d: %s", index, match[3])
    else:
        logging.getLogger("nas.search.worker").log(max(level, logging.WARNING), "worker %d: %s", index, line)
    return level


class LocalWorker:
    """One `python -m nas.search.worker` process of a local search (`workers=N`). Its stderr is
    logged here (`relay`), so its lines reach wherever this process's logging goes (the console and
    Hydra's job log under nas-search); its last line is kept as the reason, should it fail."""

    def __init__(self, app: SearchApp, index: int, threads: int):
        cmd = [sys.executable, "-m", "nas.search.worker", "--study", app.study, "--out-dir", app.out_dir,
               "--device", app.device, "--threads", str(threads), "--index", str(index), "--no-announce"]
        if app.storage.url:
            cmd += ["--storage", app.storage.url]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.index, self._last = index, ""
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
        self._relay = threading.Thread(target=self._pass_through, daemon=True)
        self._relay.start()

    def _pass_through(self) -> None:
        level = logging.WARNING
        for line in self.proc.stderr:
            if line.strip():
                level = relay(self.index, line.rstrip("\n"), level)
                self._last = line.strip()

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()

    def failure(self) -> str | None:
        """None when the process exited 0 (waiting for it), else one line: which worker and why."""
        rc = self.proc.wait()
        self._relay.join(timeout=5)
        if rc == 0:
            return None
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            why = f"was killed by {name}" + (" (out of memory?)" if -rc == signal.SIGKILL else "")
        else:
            why = f"exited with status {rc}" + (f": {self._last.removeprefix('nas-worker: error: ')}"
                                                 if self._last else "")
        return f"worker {self.index} (pid {self.proc.pid}) {why}"


def main(argv: list[str] | None = None) -> None:

    p = argparse.ArgumentParser(description="run trials of an existing nas-search study")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--announce", action=argparse.BooleanOptionalAction, default=True,
                   help="log a line per finished trial (off when the launcher announces them)")
    args = p.parse_args(argv)
    # The project's INFO lines (a long training's progress, each trial) and everyone's warnings.
    logging.basicConfig(level=logging.WARNING, format=_RECORD_FORMAT.replace("%(index)d", str(args.index)))
    logging.getLogger("nas").setLevel(logging.INFO)
    try:
        device = pin_device(args.device, args.threads, args.index)
        study, stored = join_study(args.study, args.storage, args.out_dir)
        app = search_app(stored)
        objective, sampler = build_objective(app, device, args.index)
        study.sampler, study.pruner = sampler, pruner_of(app)
        run_trials(study, objective, replace(app.storage, url=args.storage),
                   trial_logger(study, app, announce=args.announce))
    except KeyboardInterrupt:
        sys.exit(130)
    except ValueError as e:
        print(f"nas-worker: error: {e}", file=sys.stderr)
        sys.exit(2)
    except WorkerFailed as e:
        print(f"nas-worker: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
