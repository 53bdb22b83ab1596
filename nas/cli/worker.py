"""`nas-worker`: join a study started by nas-search, from this or another machine, and run trials
until the study's trial budget is used up.

    nas-worker study=graph-tpe                                    # same machine, journal storage
    nas-worker study=big-run storage.url=postgresql://user:pw@host/db device=cuda:0
"""

from __future__ import annotations

from nas.cli import hydra_cli
from nas.config import WorkerApp


def run(cfg: WorkerApp) -> None:
    from nas.search.study import join_study
    from nas.search.worker import _pruner, build_objective, pin_device, run_trials, trial_logger

    device = pin_device(cfg.device, cfg.threads, cfg.replica)
    study, stored = join_study(cfg.study, cfg.storage.url, cfg.out_dir)
    objective, sampler = build_objective(stored, device)
    study.sampler, study.pruner = sampler, _pruner(stored)
    summary = run_trials(study, objective, {"heartbeat_interval": cfg.storage.heartbeat_interval,
                                            "grace_period": cfg.storage.grace_period},
                         trial_logger(study, stored))
    print(f"nas-worker: {summary.trials} trials of study {cfg.study} in {summary.seconds:.0f} s")


main = hydra_cli("nas-worker", "worker", WorkerApp, run)


if __name__ == "__main__":
    main()
