"""Do the controllers beat random search? Best-so-far val bpc against trials, per controller.

Each (controller, search seed) pair is one study run by the project's own machinery, in process:
the search config composed as nas-search composes it (conf/search.yaml, --space, --controller,
seed), nas.search.study.open_study on a journal file, nas.search.worker.build_objective (the
Objective and the controller built by make_sampler) and run_trials. So it measures what users run,
with equal trial budgets and the same space, trainer (default: the search trainer) and data for
every controller. The search seed seeds the controller and, as in nas-search, the training, so the
studies of one seed are paired: same training seed for every controller. No MLflow.

Reference cells. nas-search starts aging evolution from the reference cells the space expresses
(lstm, gru, mut1-3, ...), which random, tpe and reinforce never get. By default no controller is
seeded, so all start equal and a difference is the controller's alone; with --reference-seeding
every controller starts from them (evolution through its seed_params, as nas-search does; the others
get the same cells enqueued as their first trials). Every trial records whether its cell equals a
reference cell, and the JSON carries both the raw best-so-far and the best-so-far over new cells.

Pruning is off by default (--pruner none): a pruned trial has no final score, so with a pruner the
curve would measure the pruner's luck as much as the controller.

Output: per controller and seed, the per-trial scores and the best-so-far curve; per controller the
mean and std over seeds of the best at trials 10, 20, ...; against random, the paired mean difference
over seeds with a Student-t 95% interval at the same trials, and the first trial from which the
controller's mean stays ahead. Anchors: Li & Talwalkar 2019 (random search, given the same budget, is
competitive with published NAS methods) and Real et al. 2019 (aging evolution and RL both beat random
search; evolution got there sooner, i.e. had the better anytime curve).

Each finished study is appended to <out>.jsonl; an unfinished one resumes from its journal in
<out>.studies/ (a killed trial is retried). Studies run over --workers processes, 1 thread each.

    python benchmarks/controllers.py --trials 40 --seeds 3 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `benchmarks.stats` imports as a script

from benchmarks.stats import (
    JsonlCache,
    best_so_far,
    machine,
    paired_difference,
    save_figure,
    search_config,
    write_json,
)

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "random"


@dataclass(frozen=True)
class StudyJob:
    key: str
    controller: str
    seed: int
    cfg: dict[str, Any]            # the composed search config of this study
    reference_seeding: bool


def study_key(cfg: dict[str, Any], seeding: bool) -> str:
    """What makes two studies the same measurement (the folder and cache name of a study)."""
    fields = {k: cfg[k] for k in ("search_space", "controller", "pruner", "data", "seed", "n_trials")}
    trainer = {k: v for k, v in cfg["trainer"].items() if k not in ("device", "threads", "progress")}
    blob = json.dumps({**fields, "trainer": trainer, "seeding": seeding}, sort_keys=True)
    return f"{cfg['controller']['name']}-s{cfg['seed']}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_study(job: StudyJob) -> dict[str, Any]:
    """Run (or resume) one study to its trial budget; its cache record."""
    from nas.cell import KNOWN_CELLS, known_cell
    from nas.search.storage import counts_toward_budget, top_up
    from nas.search.study import make_pruner, open_study
    from nas.search.worker import build_objective, pin_device, run_trials
    from nas.search_spaces import get_space
    from nas.trials import TrialRecord

    cfg = job.cfg
    device = pin_device(cfg["device"], cfg["threads"])
    study = open_study({**cfg, "n_trials": 0}, multi_objective=False)
    objective, sampler = build_objective(cfg, device)
    study.sampler = sampler
    study.pruner = make_pruner(cfg["pruner"], cfg["trainer"]["eval_every"], cfg["trainer"]["steps"])
    if job.reference_seeding and cfg["controller"]["name"] != "evolution" and not study.trials:
        space = get_space(cfg["search_space"]["name"], **cfg["search_space"]["options"])
        for params in list(space.known.values())[:cfg["n_trials"]]:  # as evolution: trial i gets the i-th
            study.enqueue_trial(params, skip_if_exists=False)
    top_up(study, cfg["n_trials"])
    start = time.perf_counter()
    run_trials(study, objective, cfg["storage"])
    trials = [t for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
              if counts_toward_budget(t)]
    references = {known_cell(name).canonical_hash(): name for name in KNOWN_CELLS}
    records = [TrialRecord.of(t) for t in trials]
    rows = [{"number": r.number, "state": r.word,
             "value": r.values[0] if r.state.name == "COMPLETE" else None,
             "cell_hash": r.cell_hash, "reference": references.get(r.cell_hash),
             "seconds": r.seconds} for r in records]
    return {"key": job.key, "controller": cfg["controller"]["name"], "seed": cfg["seed"],
            "reference_seeding": job.reference_seeding, "trials": rows,
            "best_so_far": best_so_far([r["value"] for r in rows]),
            "best_new_so_far": best_so_far([None if r["reference"] else r["value"] for r in rows]),
            "seconds": round(time.perf_counter() - start, 1)}


def plan(args: argparse.Namespace, studies_dir: Path) -> list[StudyJob]:
    jobs = []
    for name in args.controllers:
        for seed in range(args.seeds):
            cfg = search_config([f"search_space={args.space}", f"controller={name}", f"trainer={args.trainer}",
                                 f"pruner={args.pruner}", f"seed={seed}", f"n_trials={args.trials}",
                                 "tracking.enabled=false", "report.enabled=false", "export.enabled=false",
                                 "baselines=[]", "workers=1", *args.override])
            if args.corpus is not None:
                cfg["data"]["path"] = args.corpus
            if args.cache_dir is not None:
                cfg["data"]["cache_dir"] = args.cache_dir
            if name == "evolution" and not args.reference_seeding:
                cfg["controller"]["options"]["seed_params"] = []  # nas-search would seed it
            cfg["threads"] = args.threads or None
            key = study_key(cfg, args.reference_seeding)
            cfg.update(study=key, out_dir=str(studies_dir / key))
            jobs.append(StudyJob(key, name, seed, cfg, args.reference_seeding))
    return jobs


def execute(jobs: list[StudyJob], cache: JsonlCache, workers: int) -> int:
    """Run the studies the cache lacks; a finished study's folder (journal, trial runs) is removed once
    its record is cached. Returns how many ran."""
    todo = [j for j in jobs if j.key not in cache]

    def done(record: dict[str, Any], job: StudyJob) -> None:
        cache.add(record)
        shutil.rmtree(job.cfg["out_dir"], ignore_errors=True)

    if workers <= 1:
        for j in todo:
            done(run_study(j), j)
        return len(todo)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_study, j): j for j in todo}
        for f in as_completed(futures):
            done(f.result(), futures[f])
    return len(todo)


def remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def checkpoints(n: int) -> list[int]:
    return sorted({*range(10, n + 1, 10), n})


def summarise(records: list[dict[str, Any]], n: int, controllers: list[str]) -> dict[str, Any]:
    """Per controller: mean/std over seeds of the best at each checkpoint, the paired difference to
    random at the same trials, and the first trial from which its mean stays below random's."""
    import numpy as np

    curves = {c: {r["seed"]: r["best_so_far"][:n] for r in records if r["controller"] == c}
              for c in controllers}
    out: dict[str, Any] = {}
    for c in controllers:
        at = {}
        for t in checkpoints(n):
            vals = [v[t - 1] for v in curves[c].values() if len(v) >= t and v[t - 1] is not None]
            at[str(t)] = {"seeds": len(vals), "mean": _r(np.mean(vals)) if vals else None,
                          "std": _r(np.std(vals, ddof=1)) if len(vals) > 1 else None}
        entry: dict[str, Any] = {"best_at": at}
        if c != BASELINE and BASELINE in curves:
            entry["vs_random"] = {str(t): _paired(curves[c], curves[BASELINE], t) for t in checkpoints(n)}
            entry["ahead_of_random_from_trial"] = _ahead_from(curves[c], curves[BASELINE], n)
        out[c] = entry
    return out


def _r(v: float) -> float:
    return round(float(v), 5)


def _paired(a: dict[int, list], b: dict[int, list], t: int) -> dict[str, Any]:
    seeds = [s for s in sorted(set(a) & set(b)) if a[s][t - 1] is not None and b[s][t - 1] is not None]
    return paired_difference([a[s][t - 1] for s in seeds], [b[s][t - 1] for s in seeds])


def _ahead_from(a: dict[int, list], b: dict[int, list], n: int) -> int | None:
    """The first trial t such that at every trial from t to n the mean paired difference is below 0."""
    first = None
    for t in range(1, n + 1):
        d = _paired(a, b, t)["mean_diff"]
        if d is not None and d < 0:
            first = first or t
        else:
            first = None
    return first


def plot(records: list[dict[str, Any]], controllers: list[str], n: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", "-.", ":"]  # tpe's startup trials are random's own draws: curves can coincide
    for i, c in enumerate(controllers):
        rows = [r["best_so_far"][:n] for r in records if r["controller"] == c]
        xs, mean, std = [], [], []
        for t in range(1, n + 1):
            vals = [v[t - 1] for v in rows if len(v) >= t and v[t - 1] is not None]
            # Only where every seed has a best: a mean over the seeds that have one so far would jump
            # up when a worse seed gets its first complete trial.
            if vals and len(vals) == len(rows):
                xs.append(t)
                mean.append(np.mean(vals))
                std.append(np.std(vals))
        line = ax.plot(xs, mean, styles[i % len(styles)], label=f"{c} ({len(rows)} seeds)")[0]
        ax.fill_between(xs, np.subtract(mean, std), np.add(mean, std), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("trials")
    ax.set_ylabel("best val bpc so far (mean +- std over seeds)")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="graph")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--controllers", default="random,tpe,evolution,reinforce")
    p.add_argument("--trainer", default="search", help="a conf/trainer config (default: the search's)")
    p.add_argument("--pruner", default="none", help="a conf/pruner config (default none: see the docstring)")
    p.add_argument("--reference-seeding", action="store_true",
                   help="start every controller from the space's reference cells (default: none does)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per study; 0: torch's default")
    p.add_argument("--corpus", default=None, help="default: the search's (Tiny Shakespeare)")
    p.add_argument("--cache-dir", default=None, help="encoded-corpus cache (default: runs/cache)")
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override of the search config, e.g. trainer.steps=300")
    p.add_argument("--out", default=None, help="default: benchmarks/results/controllers_<space>.json")
    p.add_argument("--plot", default=None, help="default: the --out path with .png")
    args = p.parse_args(argv)
    for name in ("trials", "seeds", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    from nas.search.samplers.registry import CONTROLLERS, is_multi_objective

    args.controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    bad = [c for c in args.controllers if c not in CONTROLLERS or is_multi_objective(c)]
    if bad or not args.controllers:
        p.error(f"--controllers: expected single-objective controllers among "
                f"{[c for c in CONTROLLERS if not is_multi_objective(c)]}, got {args.controllers}")
    args.out = Path(args.out or RESULTS / f"controllers_{args.space}.json")
    args.plot = Path(args.plot or args.out.with_suffix(".png"))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the benchmark; returns the JSON it writes."""
    args = parse_args(argv)
    start = time.perf_counter()
    jobs = plan(args, args.out.with_suffix(".studies"))
    cache = JsonlCache(args.out.with_suffix(".jsonl"))
    ran = execute(jobs, cache, args.workers)
    remove_if_empty(args.out.with_suffix(".studies"))
    records = [cache.records[j.key] for j in jobs]
    cfg = jobs[0].cfg
    result = {
        "benchmark": "controllers", "space": args.space, "space_options": cfg["search_space"]["options"],
        "trainer": cfg["trainer"], "pruner": cfg["pruner"], "data": cfg["data"], "trials": args.trials,
        "seeds": args.seeds, "controllers": args.controllers, "reference_seeding": args.reference_seeding,
        "summary": summarise(records, args.trials, args.controllers),
        "studies": records,
        "run": {"studies": len(jobs), "ran_now": ran, "from_cache": len(jobs) - ran,
                "study_seconds": round(sum(r["seconds"] for r in records), 1)},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(), "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, result)
    plot(records, args.controllers, args.trials, args.plot,
         f"{args.space} space, {args.trials} trials, {args.seeds} seeds"
         + (", reference-seeded" if args.reference_seeding else ""))
    return result


def summary(result: dict[str, Any]) -> str:
    n, lines = result["trials"], []
    for c, s in result["summary"].items():
        end = s["best_at"][str(n)]
        line = f"{c:<10} best after {n} trials: {end['mean']} +- {end['std']} ({end['seeds']} seeds)"
        if "vs_random" in s:
            d = s["vs_random"][str(n)]
            ahead = s["ahead_of_random_from_trial"]
            line += (f"; vs random {d['mean_diff']} bpc, 95% CI {d['ci95']}, "
                     + (f"ahead of random (mean) from trial {ahead} on" if ahead else "never ahead of random to the end"))
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        out = main()
    except ValueError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    print(summary(out))
    print(f"wrote {out['args']['out']} and {out['args']['plot']} in {out['wall_s']} s")
