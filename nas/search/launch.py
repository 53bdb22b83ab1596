"""Running a study's trials: from the launcher (nas-search) and from nas-worker.

    run_study(study, app, show)         nas-search
    work(app, study, search) -> line    nas-worker, on a study it joined

workers=1: the trials run in this process (no start-up cost); workers=N: N worker processes
(`python -m nas.search.worker`) share the study through its storage, each pinned to a device (GPU
i mod n_gpus when GPUs exist, else the CPU with one torch thread each); workers=0: nas-worker
processes elsewhere run them and this process waits, reaping the trials of workers that died.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import optuna

from nas.config import SearchApp, WorkerApp
from nas.search.progress import progress_bar, tick
from nas.search.storage import reap_lost
from nas.search.worker import (
    LocalWorker,
    WorkerFailed,
    build_objective,
    local_workers,
    pin_device,
    pruner_of,
    run_trials,
    trial_logger,
)

log = logging.getLogger("nas.search")


def run_study(study: optuna.Study, app: SearchApp, show: bool) -> None:
    """Run the study's trials until its budget is used up, as `app.workers` says (see above)."""
    if app.workers == 0:
        wait_for_workers(study, app, show)
    elif app.workers == 1:
        run_in_process(study, app, show)
    else:
        run_processes(study, app, show)


def run_in_process(study: optuna.Study, app: SearchApp, show: bool) -> None:
    device = pin_device(app.device, app.threads)
    objective, sampler = build_objective(app, device)
    study.sampler, study.pruner = sampler, pruner_of(app)
    bar = progress_bar(study, app.n_trials, show)
    log_trial = trial_logger(study, app, announce=False)  # tick announces (or shows the bar)

    def on_trial(t) -> None:
        log_trial(t)
        tick(bar, study)

    try:
        run_trials(study, objective, app.storage, on_trial=on_trial)
    finally:
        if bar is not None:
            bar.close()


def run_processes(study: optuna.Study, app: SearchApp, show: bool, reap_every: float = 5.0) -> None:
    """workers=N: N local worker processes share the study. Meanwhile this process reaps the trials of
    workers that died (the others may be waiting on such a trial's cell). Raises WorkerFailed, once
    all have ended, naming each worker that died or failed and why; finished trials stay in the study."""
    threads = app.threads or 1
    workers = [LocalWorker(app, i, threads) for i in range(app.workers)]
    bar, reaped = progress_bar(study, app.n_trials, show), time.monotonic()
    try:
        while any(w.running() for w in workers):  # running() also collects a dead worker's zombie
            time.sleep(1.0)
            if time.monotonic() - reaped > reap_every:
                reaped = time.monotonic()
                try:
                    reap_lost(study, app.storage.grace_period)
                except OSError as e:  # a full disk: the workers meet it too and say so
                    log.warning("could not reap lost trials: %s", e)
            tick(bar, study)
    except KeyboardInterrupt:
        for w in workers:
            w.stop()
        raise
    finally:
        if bar is not None:
            bar.close()
    failed = [why for why in (w.failure() for w in workers) if why]
    if failed:
        raise WorkerFailed(f"{'; '.join(failed)}; finished trials are kept: rerun the same command to resume")


def wait_for_workers(study: optuna.Study, app: SearchApp, show: bool, poll: float = 5.0) -> None:
    """workers=0: the trials are run by nas-worker processes elsewhere (e.g. a SLURM array); wait until
    the study's budget is finished, reaping trials whose workers died. Polling all along makes this
    the reaper that judges other hosts' heartbeats soonest (see nas.search.storage on clock skew)."""
    bar = progress_bar(study, app.n_trials, show)
    try:
        while True:
            reap_lost(study, app.storage.grace_period)
            trials = study.get_trials(deepcopy=False)
            tick(bar, study)
            if all(t.state.is_finished() for t in trials):
                return
            time.sleep(poll)
    finally:
        if bar is not None:
            bar.close()


def work(app: WorkerApp, study: optuna.Study, search: SearchApp) -> str:
    """nas-worker's trials on the study it joined (`search`: the study's stored settings), until the
    study's budget is used up: in this process, or with workers_per_device=k in k worker processes per
    device of this machine, as nas-search starts them (worker i on GPU i mod n_gpus). Returns the line
    the command prints; raises WorkerFailed when the machine fails (its trial goes back to the study)."""
    if app.workers_per_device is not None:
        n = local_workers(1, app.workers_per_device, app.device)
        local = replace(search, study=app.study, out_dir=app.out_dir, device=app.device, threads=app.threads,
                        workers=n, storage=app.storage)
        run_processes(study, local, show=False)
        return f"nas-worker: {n} workers on study {app.study} finished"
    device = pin_device(app.device, app.threads, app.replica)
    objective, sampler = build_objective(search, device, app.replica)
    study.sampler, study.pruner = sampler, pruner_of(search)
    summary = run_trials(study, objective, app.storage, trial_logger(study, search))
    return f"nas-worker: {summary.trials} trials of study {app.study} in {summary.seconds:.0f} s"
