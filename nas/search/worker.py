"""A search worker: claim a waiting trial, evaluate it, tell the study; until the budget is used up.

Every worker, local or on another machine, runs this same loop against the shared storage. The
controller is rebuilt in each worker from the study's stored config (all controllers are Optuna
samplers that read the study's history), so workers need no other coordination.

    python -m nas.search.worker --study NAME [--storage URL] [--out-dir DIR] [--device D] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.search.objective import Objective, TrialFailed
from nas.search.storage import Heartbeat, pop_trial, reap_lost

log = logging.getLogger("nas.search")


@dataclass(frozen=True)
class WorkerSummary:
    trials: int
    seconds: float


def pin_device(device: str, threads: int | None, index: int = 0) -> str:
    """Choose this worker's device (GPU index mod n_gpus under 'auto') and CPU threads."""
    import torch

    if device == "auto":
        device = f"cuda:{index % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    return device


def build_objective(cfg: dict[str, Any], device: str) -> tuple[Objective, Any]:
    """The trial objective and the controller (sampler) described by a stored search config."""
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.search.controllers import is_multi_objective, make_sampler
    from search_spaces import get_space

    space = get_space(cfg["search_space"]["name"], **cfg["search_space"]["options"])
    trainer = TrainConfig(**{**cfg["trainer"], "device": device, "progress": False})
    corpus = load_corpus(cfg["data"]["path"], cfg["data"]["cache_dir"])
    controller = cfg["controller"]
    options = dict(controller["options"])
    if controller["name"] == "evolution" and "seed_params" not in options:
        options["seed_params"] = list(space.known.values())  # start from the reference cells
    sampler = make_sampler(controller["name"], seed=cfg["seed"], **options)
    multi = is_multi_objective(controller["name"])
    trials_dir = Path(cfg["out_dir"]) / "trials"
    return Objective(space.sample, trainer, corpus, cfg["seed"], multi_objective=multi,
                     trials_dir=trials_dir), sampler


def trial_logger(study: optuna.Study, cfg: dict[str, Any]):
    """The on_trial hook that logs each finished trial to MLflow (a no-op when tracking is off)."""
    from nas.tracking import Tracker

    tracker = Tracker.from_config(cfg)
    return lambda t: tracker.log_trial(study, t, cfg)


def run_trials(study: optuna.Study, objective: Objective, storage_cfg: dict[str, Any],
               on_trial=None) -> WorkerSummary:
    """The worker loop. `on_trial(frozen_trial)` is called after each finished trial."""
    start, done = time.perf_counter(), 0
    while True:
        reap_lost(study, storage_cfg["grace_period"])
        trial = pop_trial(study)
        if trial is None:
            break
        with Heartbeat(study, trial._trial_id, storage_cfg["heartbeat_interval"]):
            state, values = _run_one(objective, trial)
        study.tell(trial, values, state=state)
        done += 1
        if on_trial is not None:
            on_trial(study._storage.get_trial(trial._trial_id))
    return WorkerSummary(done, time.perf_counter() - start)


def _run_one(objective: Objective, trial: optuna.Trial):
    try:
        value = objective(trial)
        return TrialState.COMPLETE, value
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except TrialFailed as e:
        trial.set_user_attr("nas_state", e.state)
        trial.set_user_attr("reason", str(e))
        return TrialState.FAIL, None
    except Exception as e:
        log.exception("trial %d failed", trial.number)
        trial.set_user_attr("nas_state", "error")
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        return TrialState.FAIL, None


def main(argv: list[str] | None = None) -> None:
    from nas.search.study import join_study

    p = argparse.ArgumentParser(description="run trials of an existing nas-search study")
    p.add_argument("--study", required=True)
    p.add_argument("--storage", default=None)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"worker {args.index}: %(levelname)s %(message)s")
    try:
        device = pin_device(args.device, args.threads, args.index)
        study, cfg = join_study(args.study, args.storage, args.out_dir)
        objective, sampler = build_objective(cfg, device)
        study.sampler = sampler
        study.pruner = _pruner(cfg)
        run_trials(study, objective, {**cfg["storage"], "url": args.storage}, trial_logger(study, cfg))
    except KeyboardInterrupt:
        sys.exit(130)
    except ValueError as e:
        print(f"nas-worker: error: {e}", file=sys.stderr)
        sys.exit(2)


def _pruner(cfg: dict[str, Any]):
    from nas.search.study import make_pruner

    return make_pruner(cfg["pruner"], cfg["trainer"]["eval_every"], cfg["trainer"]["steps"])


if __name__ == "__main__":
    main()
