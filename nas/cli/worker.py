"""`nas-worker`: join a study started by nas-search, from this or another machine, and run trials
until the study's trial budget is used up.

    nas-worker study=graph-tpe                                    # same machine, journal storage
    nas-worker study=big-run storage.url=postgresql://user:pw@host/db device=cuda:0
"""

from __future__ import annotations

from nas.cli import Failure, check_study_exists, check_trainer, hydra_cli
from nas.cli.search import check_storage
from nas.config import WorkerApp


def check(app: WorkerApp) -> None:
    """The worker's settings, and that its study exists, before any folder is created (the study's
    own settings are checked once read from its storage)."""
    from nas.config import check_worker_app

    check_worker_app(app)
    check_storage(app.storage)
    check_study_exists(app.study, app.storage.url, app.out_dir)


def run(cfg: WorkerApp) -> None:
    from nas.search.study import join_study
    from nas.search.worker import WorkerFailed, _pruner, build_objective, pin_device, run_trials, trial_logger

    study, stored = join_study(cfg.study, cfg.storage.url, cfg.out_dir)
    check_trainer(stored["trainer"], stored["data"])
    if cfg.workers_per_device is not None:
        return run_several(cfg, study, stored)
    device = pin_device(cfg.device, cfg.threads, cfg.replica)
    objective, sampler = build_objective(stored, device, cfg.replica)
    study.sampler, study.pruner = sampler, _pruner(stored)
    try:
        summary = run_trials(study, objective, {"heartbeat_interval": cfg.storage.heartbeat_interval,
                                                "grace_period": cfg.storage.grace_period},
                             trial_logger(study, stored))
    except WorkerFailed as e:  # the machine failed (full disk, ...): the trial goes back to the study
        raise Failure(str(e)) from e
    print(f"nas-worker: {summary.trials} trials of study {cfg.study} in {summary.seconds:.0f} s")


def run_several(cfg: WorkerApp, study, stored: dict) -> None:
    """workers_per_device=k: k worker processes per device of this machine, as nas-search starts them
    (worker i on GPU i mod n_gpus), until the study's budget is used up."""
    from nas.search.run import _run_processes
    from nas.search.worker import WorkerFailed, local_workers

    n = local_workers(1, cfg.workers_per_device, cfg.device)
    local = {**stored, "study": cfg.study, "out_dir": cfg.out_dir, "device": cfg.device, "threads": cfg.threads,
             "workers": n, "storage": {"url": cfg.storage.url, "heartbeat_interval": cfg.storage.heartbeat_interval,
                                       "grace_period": cfg.storage.grace_period}}
    try:
        _run_processes(study, local, show=False)
    except WorkerFailed as e:
        raise Failure(str(e)) from e
    print(f"nas-worker: {n} workers on study {cfg.study} finished")


main = hydra_cli("nas-worker", "worker", WorkerApp, run, check)


if __name__ == "__main__":
    main()
