"""Search overhead outside training, and trials per hour with 2 workers vs 1.

Runs the same small search (default per-trial budget, conf/trainer/search.yaml) twice in fresh
studies: with 1 worker (in process, torch's default threads) and with 2 worker processes (one
thread each). Reports, for the 1-worker run, the share of the search's wall time spent outside
`evaluate` (sampling, storage, deduplication, process start, tracking), and the trials-per-hour
ratio of the two runs. Baselines and the final report are off: they are not per-trial overhead.

    python benchmarks/search_overhead.py --trials 8
    python benchmarks/search_overhead.py --trials 8 --tracking   # include MLflow logging per trial
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf


def config(out: Path, trials: int, workers: int, tracking: bool, space: str, controller: str) -> dict:
    import nas.cli.search  # noqa: F401 - registers the schema
    from nas.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[
            f"n_trials={trials}", f"workers={workers}", f"out_dir={out}", f"study=bench-{workers}",
            f"search_space={space}", f"controller={controller}", "baselines=[]", "report.enabled=false",
            "export.enabled=false", f"tracking.enabled={str(tracking).lower()}", "pruner=none",
            f"tracking.uri=sqlite:///{out}/mlflow.db"])
    return OmegaConf.to_container(cfg, resolve=True)


def run(out: Path, trials: int, workers: int, tracking: bool, space: str, controller: str) -> dict:
    from nas.search.run import search
    from nas.search.study import join_study
    from nas.trials import records

    cfg = config(out, trials, workers, tracking, space, controller)
    start = time.perf_counter()
    search(cfg, progress=False)
    wall = time.perf_counter() - start
    study, _ = join_study(cfg["study"], None, str(out))
    train = sum(r.seconds or 0.0 for r in records(study) if not r.is_duplicate)
    return {"workers": workers, "trials": len(study.trials), "wall_s": round(wall, 2),
            "evaluate_s": round(train, 2), "trials_per_hour": round(3600 * len(study.trials) / wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--space", default="highway")
    p.add_argument("--controller", default="random")
    p.add_argument("--tracking", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nas-bench-"))
    try:
        one = run(root / "w1", args.trials, 1, args.tracking, args.space, args.controller)
        two = run(root / "w2", args.trials, 2, args.tracking, args.space, args.controller)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # With one in-process worker, everything that is not evaluate() is search overhead.
    overhead = (one["wall_s"] - one["evaluate_s"]) / one["wall_s"]
    result = {"one_worker": one, "two_workers": two, "overhead_share_1_worker": round(overhead, 4),
              "speedup_2_vs_1": round(two["trials_per_hour"] / one["trials_per_hour"], 2)}
    print(json.dumps(result, indent=2))
    print(f"search overhead outside training: {100 * overhead:.2f}% of wall time (1 worker); "
          f"trials/hour 2 workers vs 1: {result['speedup_2_vs_1']:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
