"""The study's persistent storage and the trial budget shared by all workers.

Storage: by default an Optuna journal file, `runs/search/<study>/journal.log` (safe for several
processes on one machine, ~10x cheaper per trial than SQLite here); any Optuna RDB URL
(postgresql://, mysql://, sqlite:///) for workers on several machines.

Partial writes: see nas.search.journal (the journal file never stays unreadable after a crash).

Trial budget: `top_up` enqueues WAITING trials until the study holds `n_trials` trials that count
(finished, running or waiting; trials lost with a killed worker do not count, nor trials that
trained nothing: duplicates, screened and invalid cells, each replaced by its worker with a new
placeholder, up to MAX_TRIALS_FACTOR trials per counted one), and workers only
ever *pop* waiting trials (an atomic WAITING -> RUNNING transition in every Optuna storage). So N
workers run exactly n_trials trials between them, and rerunning a command resumes the study until
its budget is met.

Killed workers: every running trial records its worker (`nas:worker` = host:pid, and the process's
start time `nas:worker_started`, as pids are reused) and a heartbeat (`nas:heartbeat`, refreshed by
a thread every heartbeat_interval s). `reap_lost` fails a RUNNING trial whose worker is gone, marks
it lost (nas.trials.Outcome.LOST) and enqueues a retry with the same parameters, so completed
results are never lost and a lost cell is evaluated again. Gone means:
 - same host: the worker process no longer exists. A live process's trial is never taken from it,
   however late its heartbeat (a long garbage collection or a slow disk is not a death). Hosts are
   told apart by name: containers that share a hostname must share their pid namespace too.
 - another host: its heartbeat has not changed for grace_period seconds *of this reaper's own
   clock*. The beat's value is only compared with earlier values of itself, never with this host's
   time, so clock skew between hosts cannot make a live worker look dead; the cost is that a
   reaper must watch a trial for grace_period seconds before it can reap it (the waiting launcher,
   `workers=0`, polls all along; a worker reaps between its trials).
`check_storage` rejects settings where a beat could be late by design (grace < 2 beats + margin).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas import trials
from nas.search import optuna_adapter
from nas.search.errors import StudyError
from nas.search.journal import SafeJournalBackend
from nas.trials import Outcome, TrialRecord
from nas.urls import redact

log = logging.getLogger("nas.search")

WORKER_ATTR, HEARTBEAT_ATTR, STARTED_ATTR = "nas:worker", "nas:heartbeat", "nas:worker_started"
# Seconds a grace period must exceed two heartbeat intervals by: one journal write may wait up to
# the 5 s lock takeover below, and a beat is written between two waits.
GRACE_MARGIN = 10


def check_storage(storage: Mapping[str, Any] | Any) -> None:
    """Raise StudyError unless heartbeat_interval >= 1 and grace_period >= 2 * heartbeat_interval +
    GRACE_MARGIN, both whole seconds. `storage`: the `storage` config section (mapping or object)."""
    def get(key: str) -> Any:
        return storage[key] if isinstance(storage, Mapping) else getattr(storage, key)

    beat, grace = get("heartbeat_interval"), get("grace_period")
    for key, value in (("heartbeat_interval", beat), ("grace_period", grace)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value != int(value):
            raise StudyError(f"storage.{key} must be a whole number of seconds, got {value!r}")
    if beat < 1:
        raise StudyError(f"storage.heartbeat_interval must be >= 1 s, got {beat}")
    if grace < 2 * beat + GRACE_MARGIN:
        raise StudyError(f"storage.grace_period must be >= 2 x heartbeat_interval + {GRACE_MARGIN} = "
                         f"{2 * beat + GRACE_MARGIN} s (a live worker's beat may come that late), got {grace}")


def make_storage(url: str | None, study_dir: Path):
    """An Optuna storage: the journal file in `study_dir` when `url` is None, else the RDB `url`.

    The journal is repaired on opening (see the module docstring); an unwritable folder or a damaged
    journal raises StudyError."""
    if url:
        if "://" not in url:
            raise ValueError(f"storage.url {url!r} is not a database URL (e.g. postgresql://user@host/db)")
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # noqa: BLE001 - driver/connection errors come in many types
            # Optuna wraps the driver's error ("An exception is raised during the commit..."): the
            # innermost cause says what happened (e.g. "remaining connection slots are reserved").
            seen = {id(e)}
            while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
                e = e.__cause__ or e.__context__
                seen.add(id(e))
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot open storage {redact(url)}: {redact(first)}") from None
    from optuna.storages.journal import JournalStorage


    path = study_dir / "journal.log"
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        backend = SafeJournalBackend(str(path))
    except OSError as e:
        raise StudyError(f"cannot create the study journal {path}: {e.strerror or e}; make the folder "
                         "writable or choose another out_dir=...") from None
    if backend.needs_repair():
        backend.repair()
    try:
        return JournalStorage(backend)
    except ValueError:  # a damaged line inside: Optuna's own message names no file
        backend.repair()
        return JournalStorage(SafeJournalBackend(str(path)))


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# At most this many trials per trial that counts (and at least MIN_TRIALS_CAP in all): a space or
# controller that yields only duplicates or junk still ends. Measured: 56% of random `graph` cells are
# screened at the search budget, so ~2.3 trials per trained cell.
MAX_TRIALS_FACTOR = 10
MIN_TRIALS_CAP = 20


def counts_toward_budget(t: FrozenTrial) -> bool:
    """Whether `t` uses the study's budget: not lost with its worker, and not a trial that trained
    nothing (a duplicate of an earlier cell, a screened or an invalid cell)."""
    record = TrialRecord.of(t)
    return not (record.is_lost or record.trained_nothing)


def replace_if_free(study: optuna.Study, t: FrozenTrial) -> bool:
    """Enqueue a placeholder for the finished trial `t` if it trained nothing (see counts_toward_budget),
    so that the study still trains n_trials cells; not beyond MAX_TRIALS_FACTOR trials per counted
    trial. Called once per trial by the worker that ran it. True when one was enqueued."""
    record = TrialRecord.of(t)
    if counts_toward_budget(t) or record.outcome == Outcome.LOST:
        return False
    everything = study.get_trials(deepcopy=False)
    counted = sum(counts_toward_budget(x) for x in everything)
    if len(everything) >= max(MIN_TRIALS_CAP, MAX_TRIALS_FACTOR * counted):
        log.warning("study %s: %d trials for %d that train a cell; not replacing trial %d (%s)",
                    study.study_name, len(everything), counted, t.number, record.outcome)
        return False
    study.enqueue_trial({}, skip_if_exists=False)
    return True


def top_up(study: optuna.Study, n_trials: int) -> int:
    """Enqueue WAITING trials until `n_trials` trials count; returns how many were added."""
    have = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
    missing = max(0, n_trials - have)
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def pop_trial(study: optuna.Study) -> optuna.Trial | None:
    """Claim one WAITING trial for this worker, or None when the budget is used up."""
    # The atomic claim Study.ask() itself uses; ask() would create a new trial when none is waiting,
    # overrunning the budget.
    trial_id = optuna_adapter.pop_waiting(study)
    if trial_id is None:
        return None
    # Heartbeat and start time before owner: a reaper that sees the owner also sees them.
    optuna_adapter.set_system_attr(study, trial_id, HEARTBEAT_ATTR, time.time())
    optuna_adapter.set_system_attr(study, trial_id, STARTED_ATTR, _started(os.getpid()))
    optuna_adapter.set_system_attr(study, trial_id, WORKER_ATTR, this_worker())
    return optuna.Trial(study, trial_id)


class Heartbeat:
    """Refresh the running trial's heartbeat every `interval` seconds from a daemon thread.

    `taken` turns True when the trial was finished by another process (reaped as lost): the beats
    stop, and the owner's result will be refused by the storage."""

    def __init__(self, study: optuna.Study, trial: optuna_adapter.TrialRef, interval: float):
        self.taken = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        args=(study, optuna_adapter.trial_id(trial), interval))

    def _beat(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                optuna_adapter.set_system_attr(study, trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                self.taken = True
                return
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat of trial %d failed: %s", trial_id, e)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks after boot, field 22 of /proc/<pid>/stat), or
    None where unknown. With the pid it names one process: pids are reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` exists and, when `started` is known, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _started(pid) if started is not None else None
    return now is None or now == started


# (study name, trial id) -> (the heartbeat value last seen, this process's monotonic time it was
# first seen): a heartbeat is judged by how long it stays unchanged, never by its value.
_seen: dict[tuple[str, int], tuple[Any, float]] = {}


def _is_lost(t: FrozenTrial, study_name: str, grace_period: float, now: float) -> bool:
    worker = t.system_attrs.get(WORKER_ATTR)
    # No owner: a worker died between its claim and writing its name (pop_trial writes it at once).
    # Nothing names a process to ask, so the heartbeat rule below decides: absent for grace_period.
    if worker is not None:
        host, _, pid = str(worker).rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return not _alive(int(pid), t.system_attrs.get(STARTED_ATTR))  # sure; a live worker keeps its trial
    key, beat = (study_name, optuna_adapter.trial_id(t)), t.system_attrs.get(HEARTBEAT_ATTR)
    seen = _seen.get(key)
    if seen is None or seen[0] != beat:
        _seen[key] = (beat, now)
        return False
    return now - seen[1] > grace_period


def release(study: optuna.Study, t: FrozenTrial, reason: str) -> bool:
    """Fail the RUNNING trial `t` as lost with `reason` and enqueue a retry with its parameters.
    False (and nothing enqueued) when another process finished it first."""
    # Attributes first: a finished trial can no longer be annotated. If another reaper wins the
    # state change below, it wrote the same attributes and it alone enqueues the retry.
    try:
        trials.mark(optuna_adapter.user_attr_writer(study, t), Outcome.LOST, reason)
        if not optuna_adapter.fail(study, t):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    trials.enqueue_retry(study, t)
    return True


def reap_lost(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and enqueue their retries. Returns their numbers."""
    now, reaped = time.monotonic(), []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        if not _is_lost(t, study.study_name, grace_period, now):
            continue
        worker = t.system_attrs.get(WORKER_ATTR)
        if release(study, t, f"worker {worker} stopped"):
            reaped.append(t.number)
            log.warning("trial %d lost with its worker %s: retrying it", t.number, worker)
    alive = {(study.study_name, optuna_adapter.trial_id(t)) for t in running if t.number not in reaped}
    for key in [k for k in _seen if k[0] == study.study_name and k not in alive]:
        del _seen[key]
    return reaped
