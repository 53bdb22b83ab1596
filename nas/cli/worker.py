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


main = hydra_cli("nas-worker", "worker", WorkerApp, run, check)


if __name__ == "__main__":
    main()
