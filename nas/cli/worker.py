"""`nas-worker`: join a study started by nas-search, from this or another machine, and run trials
until the study's trial budget is used up.

    nas-worker study=graph-tpe                                    # same machine, journal storage
    nas-worker study=big-run storage.url=postgresql://user:pw@host/db device=cuda:0
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore

from nas.cli import CONF_DIR, check_overrides, run_task
from nas.config import WorkerApp

ConfigStore.instance().store(name="worker_schema", node=WorkerApp)


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


@hydra.main(config_path=CONF_DIR, config_name="worker", version_base="1.3")
def _main(cfg: WorkerApp) -> None:
    run_task("nas-worker", lambda: run(cfg))


def main() -> None:
    check_overrides("nas-worker", "worker", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
