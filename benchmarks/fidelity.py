"""Fidelity of the search's budget: does a short training rank cells as a longer one does?

N cells drawn from a search space (optuna RandomSampler(--sample-seed) through the space function,
deduplicated by canonical hash; invalid draws, and cells that nas.train.screen fails at the search
budget, are skipped and counted: a search fails those without training them, --no-screen keeps
them) and the reference cells lstm, gru, mut1-3 are trained with every seed at the search's
per-trial budget (conf/trainer/search.yaml, composed as nas-search composes it), at any extra
--budgets, and at --long-factor times the search's steps. Everything but `steps` is the search's
trainer: same data, batch, parameter budget, lr.

Each budget is a separate training run, not a point on the long run's curve: once the trainer's lr
schedule depends on the total steps (cosine, linear decay), the model at step 150 of a 1200-step run
is not the model a 150-step run ends with, and the search scores the latter.

Reported, per short budget against the long one, among the cells that learn (every long-budget seed
finished and the long seed-mean val bpc is below the unigram entropy of the training split: a model
that does not beat a unigram model has learned no context, and its rank is noise):
    Spearman's rho and Kendall's tau-b of the per-cell seed means, percentile-bootstrap 95% intervals
    over cells (--resamples, seeded); the top-5 overlap; the seed spread (mean over cells of the std
    over seeds) against the median gap between adjacent cells' means.
Cells whose short run diverged on some seed are left out of that budget's statistics and counted.

The pruner's rungs (`rungs`): successive halving decides at intermediate steps *inside* a run, on
the val bpc the trainer reports every eval_every steps (on eval_chars characters). For each of
--curve-budgets (default: the search's steps), at every step of those curves: the same rank
statistics against the long budget, and successive halving's cut there (keep the best
n // reduction_factor of the n cells, the search's pruner.reduction_factor): how many of the long
budget's top-3 and top-5 cells survive it, on the seed means and on one seed at a time (a search
trains each cell with one seed). `cut` in each budget's statistics is the same cut on the short
run's final score. The curve-bearing records of runs cached before curves were kept are trained
again under `<key>|curve`; the old record and every number computed from it stay as they were.

Every finished (cell, seed, budget) run is appended to <out>.jsonl, so an interrupted run resumes
where it stopped (same command); runs go to a process pool of --workers processes, --threads torch
threads each. Output: the JSON (per-cell table, statistics, machine, versions, config, wall time),
a scatter plot of short- vs long-budget val bpc with error bars over seeds, and <plot>_rungs.png:
Spearman and the top cells' survival against the step of the curves.

    python benchmarks/fidelity.py --space graph --cells 24 --seeds 2 --workers 2
    python benchmarks/fidelity.py --budgets 150,600 --long-factor 8 --curve-budgets 300,600

(Just over 400 lines: one experiment's protocol, read top to bottom; its plots are in fidelity_plots.py.)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `benchmarks.stats` imports as a script

from benchmarks.fidelity_plots import plot, plot_rungs, rungs_plot_path, summary
from benchmarks.stats import (
    JsonlCache,
    cut_survival,
    machine,
    rank_agreement,
    search_config,
    seed_spread_vs_gaps,
    top_k_overlap,
    write_json,
)

REFERENCES = ("lstm", "gru", "mut1", "mut2", "mut3")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Run:
    """One training: a cell, a seed, a budget. `key` identifies it in the cache."""

    key: str
    label: str
    cell_json: str
    seed: int
    steps: int
    trainer: dict[str, Any]
    corpus: str | None
    cache_dir: str | None
    curve: bool = False  # its intermediate val bpc curve is wanted (the pruner's rungs)

    @property
    def curve_key(self) -> str:
        """Where a rerun that only adds the curve is cached: a record cached before curves were kept
        stays as it was, so the numbers computed from it do not move."""
        return f"{self.key}|curve"


def train(run: Run, key: str | None = None) -> dict[str, Any]:
    """Train one run; the cache record (plain JSON types) under `key` (default: run.key), with the
    curve of (step, intermediate val bpc) the trainer reported every eval_every steps."""
    from nas.cell import CellSpec
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.train import evaluate

    cfg = TrainConfig(**{**run.trainer, "steps": run.steps})
    r = evaluate(CellSpec.from_json(run.cell_json), cfg, run.seed, load_corpus(run.corpus, run.cache_dir))
    return {"key": key or run.key, "label": run.label, "cell_hash": r.cell_hash, "seed": run.seed,
            "steps": run.steps, "val_bpc": r.val_bpc, "divergence": r.divergence, "params": r.params,
            "hidden_size": r.hidden_size, "seconds": r.seconds, "curve": [list(p) for p in r.curve]}


def sample_cells(space_name: str, options: dict[str, Any], n: int, seed: int, screen=None):
    """The reference cells, then `n` distinct cells drawn at random from the space; with `screen`
    (spec -> None or a reason), only cells it passes, as a search trains only those.

    Returns ([(label, spec, is_reference)], counts of draws, invalid, duplicate and screened draws)."""
    import optuna

    from nas.cell import CellError, known_cell
    from nas.search_spaces import get_space

    space = get_space(space_name, **options)
    cells = [(name, known_cell(name), True) for name in REFERENCES]
    seen = {spec.canonical_hash() for _, spec, _ in cells}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    counts = {"drawn": 0, "invalid": 0, "duplicates": 0, "screened": 0}
    while len(cells) < len(REFERENCES) + n:
        if counts["drawn"] >= 100 * max(n, 1):
            raise ValueError(f"fidelity: space {space_name!r} gave only {len(cells) - len(REFERENCES)} "
                             f"distinct valid cells in {counts['drawn']} draws, expected {n}")
        trial = study.ask()
        counts["drawn"] += 1
        try:
            spec = space.sample(trial)
        except CellError:
            counts["invalid"] += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        h = spec.canonical_hash()
        if h in seen:
            counts["duplicates"] += 1
            continue
        seen.add(h)
        if screen is not None and screen(spec) is not None:
            counts["screened"] += 1
            continue
        cells.append((f"c{len(cells) - len(REFERENCES):02d}", spec, False))
    return cells, counts


def screener(trainer: dict[str, Any], corpus):
    """nas.train.screen at the search's budget and seed 0: the cells a search would fail at once."""
    from nas.config import TrainConfig
    from nas.train import screen

    cfg = TrainConfig(**trainer)
    return lambda spec: screen(spec, cfg, corpus, 0)


def plan(cells, seeds: int, budgets: list[int], trainer: dict[str, Any], corpus, args,
         curves: list[int] = ()) -> list[Run]:
    """Every (cell, seed, budget) run, the longest budgets first (the pool finishes sooner); the runs
    of the budgets in `curves` want their intermediate curve."""
    from nas.config import TrainConfig
    from nas.search.objective import budget_key

    runs = []
    for steps in sorted(budgets, reverse=True):
        for seed in range(seeds):
            key = budget_key(TrainConfig(**{**trainer, "steps": steps}), seed, corpus.source_hash)
            for label, spec, _ in cells:
                runs.append(Run(f"{spec.canonical_hash()}|{key}", label, spec.to_json(indent=None), seed,
                                steps, trainer, args.corpus, args.cache_dir, steps in curves))
    return runs


def missing(run: Run, cache: JsonlCache) -> str | None:
    """The key `run` must be trained under, or None when the cache holds all it needs: its record,
    and for a curve-wanting run a curve (in that record or in a curve-only rerun's)."""
    if run.key not in cache:
        return run.key
    if run.curve and "curve" not in cache.records[run.key] and run.curve_key not in cache:
        return run.curve_key
    return None


def curve_of(run: Run, cache: JsonlCache) -> list[list[float]]:
    """[[step, val bpc], ...] of a run (from its record, else from its curve-only rerun)."""
    rec = cache.records[run.key]
    return rec["curve"] if "curve" in rec else cache.records[run.curve_key]["curve"]


def execute(runs: list[Run], cache: JsonlCache, workers: int) -> int:
    """Run what the cache lacks, recording each result as it finishes. Returns how many ran."""
    todo = [(r, key) for r in runs if (key := missing(r, cache)) is not None]
    if workers <= 1:
        for r, key in todo:
            cache.add(train(r, key))
        return len(todo)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train, r, key) for r, key in todo]
        for f in as_completed(futures):
            cache.add(f.result())
    return len(todo)


def cell_table(cells, runs: list[Run], cache: JsonlCache, budgets: list[int], threshold: float):
    """Per cell: the val bpc of each seed at each budget (None: diverged), seed means, whether it learns."""
    import numpy as np

    by_cell: dict[str, dict[str, list]] = {}
    curves: dict[str, dict[str, list]] = {}
    for r in runs:
        rec = cache.records[r.key]
        by_cell.setdefault(r.label, {}).setdefault(str(r.steps), []).append(rec)
        if r.curve:
            curves.setdefault(r.label, {}).setdefault(str(r.steps), []).append((r.seed, curve_of(r, cache)))
    long = str(max(budgets))
    table = []
    for label, spec, ref in cells:
        recs = by_cell[label]
        vals = {b: [rec["val_bpc"] for rec in sorted(recs[b], key=lambda x: x["seed"])] for b in recs}
        means = {b: (round(float(np.mean(v)), 5) if all(x is not None for x in v) else None)
                 for b, v in vals.items()}
        first = recs[long][0]
        table.append({"label": label, "cell_hash": spec.canonical_hash(), "reference": ref,
                      "params": first["params"], "hidden_size": first["hidden_size"], "val_bpc": vals,
                      "mean": means, "learns": means[long] is not None and means[long] < threshold,
                      "curves": {b: [c for _, c in sorted(v, key=lambda x: x[0])]
                                 for b, v in curves.get(label, {}).items()}})
    return table


def statistics(table: list[dict], short: list[int], long: int, resamples: int,
               reduction_factor: int = 3) -> dict[str, Any]:
    """The fidelity numbers of each short budget against the long one, among the cells that learn;
    `cut`: successive halving's cut on the short budget's final scores (stats.cut_survival)."""
    learners = [c for c in table if c["learns"]]
    out = {}
    for b in short:
        rows = [c for c in learners if c["mean"][str(b)] is not None]
        s = {c["label"]: c["mean"][str(b)] for c in rows}
        lg = {c["label"]: c["mean"][str(long)] for c in rows}
        out[str(b)] = {
            "cells": len(rows), "short_diverged": len(learners) - len(rows),
            **rank_agreement([s[k] for k in s], [lg[k] for k in s], resamples, seed=0),
            "top5": top_k_overlap(s, lg, 5),
            "cut": cut_survival(s, lg, reduction_factor),
            "seed_spread": seed_spread_vs_gaps({c["label"]: c["val_bpc"][str(b)] for c in rows}),
        }
    out["long_seed_spread"] = seed_spread_vs_gaps({c["label"]: c["val_bpc"][str(long)] for c in learners})
    return out


def rung_statistics(table: list[dict], curves: list[int], long: int, resamples: int,
                    reduction_factor: int) -> dict[str, dict[str, Any]]:
    """The pruner's view, per curve budget and per step of its curve: how the intermediate val bpc at
    that step ranks the cells that learn against the long budget's final val bpc (as `statistics`),
    and successive halving's cut there, on the seed means (`cut`) and on each seed alone as a search
    sees a cell (`cut_per_seed`: mean over seeds of the top-k cells that survive)."""
    learners = [c for c in table if c["learns"]]
    out: dict[str, dict[str, Any]] = {}
    for b in map(str, curves):
        steps = sorted({int(p[0]) for c in learners for curve in c["curves"][b] for p in curve})
        out[b] = {str(step): rung_at(learners, b, step, long, resamples, reduction_factor) for step in steps}
    return out


def rung_at(learners: list[dict], budget: str, step: int, long: int, resamples: int,
            reduction_factor: int) -> dict[str, Any]:
    """`rung_statistics` at one step, over the cells with a value there on every seed (`missing`:
    those whose run had diverged before it on some seed)."""
    import numpy as np

    per_seed = {}
    for c in learners:
        vals = [{int(s): v for s, v in curve}.get(step) for curve in c["curves"][budget]]
        if vals and all(v is not None for v in vals):
            per_seed[c["label"]] = vals
    rung = {k: float(np.mean(v)) for k, v in per_seed.items()}
    lg = {c["label"]: c["mean"][str(long)] for c in learners if c["label"] in rung}
    seeds = [cut_survival({k: v[i] for k, v in per_seed.items()}, lg, reduction_factor)
             for i in range(min(map(len, per_seed.values()), default=0))]
    return {"cells": len(rung), "missing": len(learners) - len(rung),
            **rank_agreement(list(rung.values()), [lg[k] for k in rung], resamples, seed=0),
            "top5": top_k_overlap(rung, lg, 5), "cut": cut_survival(rung, lg, reduction_factor),
            "cut_per_seed": {t: round(float(np.mean([s[t]["survive"] for s in seeds])), 4) if seeds else None
                             for t in ("top3", "top5")}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="graph")
    p.add_argument("--cells", type=int, default=24, help="sampled cells, besides the 5 reference cells")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--short-steps", type=int, default=None, help="default: the search trainer's steps")
    p.add_argument("--budgets", default="", help="extra short budgets in steps, comma-separated")
    p.add_argument("--long-factor", type=int, default=8)
    p.add_argument("--curve-budgets", default="",
                   help="short budgets whose intermediate val bpc (the pruner's rungs) is measured, "
                        "comma-separated; default: the search trainer's steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run; 0: torch's default")
    p.add_argument("--corpus", default=None, help="default: the shipped Tiny Shakespeare")
    p.add_argument("--cache-dir", default=None, help="encoded-corpus cache (default: runs/cache)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--no-screen", action="store_true",
                   help="keep sampled cells that nas.train.screen fails (a search never trains them)")
    p.add_argument("--learn-below", type=float, default=None,
                   help="val bpc a cell must beat at the long budget to count; default: unigram entropy")
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override of the search config, e.g. trainer.param_budget=5000")
    p.add_argument("--out", default=None, help="default: benchmarks/results/fidelity_<space>.json")
    p.add_argument("--plot", default=None, help="default: the --out path with .png")
    args = p.parse_args(argv)
    for name in ("cells", "seeds", "long_factor", "workers", "resamples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("budgets", "curve_budgets"):
        flag, text = f"--{name.replace('_', '-')}", getattr(args, name)
        try:
            steps = sorted({int(b) for b in text.split(",") if b.strip()})
        except ValueError:
            p.error(f"{flag}: expected comma-separated step counts such as 150,300, got {text!r}")
        if any(b < 1 for b in steps):
            p.error(f"{flag}: every budget must be >= 1 step, got {steps}")
        setattr(args, name, steps)
    args.out = Path(args.out or RESULTS / f"fidelity_{args.space}.json")
    args.plot = Path(args.plot or args.out.with_suffix(".png"))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the benchmark; returns the JSON it writes."""
    args = parse_args(argv)
    start = time.perf_counter()
    from nas.data import load_corpus, unigram_entropy_bits

    cfg = search_config([f"search_space={args.space}", *args.override])
    trainer = {**cfg["trainer"], "progress": False, "threads": args.threads or None}
    base = args.short_steps or trainer["steps"]
    short, long = sorted({base, *args.budgets}), base * args.long_factor
    curves = args.curve_budgets or [base]
    if short[-1] >= long:
        raise ValueError(f"fidelity: every short budget must be below the long one ({long} steps), "
                         f"got {short}")
    if not set(curves) <= set(short):
        raise ValueError(f"fidelity: --curve-budgets must be among the short budgets {short}, got {curves}")
    corpus = load_corpus(args.corpus, args.cache_dir)
    entropy = unigram_entropy_bits(corpus.train)
    threshold = entropy if args.learn_below is None else args.learn_below
    # screened at the measured search's budget, as that search would screen (the cosine schedule's
    # first steps depend on the total)
    cells, counts = sample_cells(args.space, cfg["search_space"]["options"], args.cells, args.sample_seed,
                                 None if args.no_screen else screener({**trainer, "steps": base}, corpus))
    runs = plan(cells, args.seeds, [*short, long], trainer, corpus, args, curves)
    cache = JsonlCache(args.out.with_suffix(".jsonl"))
    ran = execute(runs, cache, args.workers)
    table = cell_table(cells, runs, cache, [*short, long], threshold)
    rf = int(cfg["pruner"].get("reduction_factor") or 3)
    result = {
        "benchmark": "fidelity", "space": args.space, "space_options": cfg["search_space"]["options"],
        "trainer": trainer, "short_budgets": short, "long_steps": long, "seeds": args.seeds,
        "corpus": {"name": corpus.name, "sha256": corpus.source_hash, "unigram_entropy_bits": entropy},
        "sampling": {"sampler": "RandomSampler", "seed": args.sample_seed, "requested": args.cells,
                     "screen": not args.no_screen, **counts},
        "learns_if": f"every long-budget seed finished and the seed-mean val bpc < {threshold:.4f}"
                     + (" (unigram entropy)" if args.learn_below is None else ""),
        "cells_total": len(table), "cells_learning": sum(c["learns"] for c in table),
        "budgets": statistics(table, short, long, args.resamples, rf),
        "rungs": {"curve_budgets": curves, "eval_every": trainer["eval_every"], "reduction_factor": rf,
                  "pruner": cfg["pruner"], "by_budget": rung_statistics(table, curves, long, args.resamples, rf)},
        "cells": table,
        "runs": {"total": len(runs), "ran_now": ran, "from_cache": len(runs) - ran,
                 "train_seconds": round(sum(cache.records[r.key]["seconds"] for r in runs), 1),
                 "curve_reruns": curve_reruns(runs, cache)},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(), "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(args.out, result)
    plot(table, short, long, threshold, args.plot, f"fidelity, {args.space} space, {args.seeds} seeds")
    plot_rungs(result, rungs_plot_path(args.plot))
    return result


def curve_reruns(runs: list[Run], cache: JsonlCache) -> dict[str, Any]:
    """The runs trained again only for their curve (their record predates curves): how many, their
    training seconds, and how far the rerun's final val bpc is from the cached one (0 when training is
    reproducible; the statistics use the cached one)."""
    pairs = [(cache.records[r.key], cache.records[r.curve_key]) for r in runs
             if r.curve and "curve" not in cache.records[r.key] and r.curve_key in cache]
    diffs = [abs(a["val_bpc"] - b["val_bpc"]) for a, b in pairs
             if a["val_bpc"] is not None and b["val_bpc"] is not None]
    return {"runs": len(pairs), "train_seconds": round(sum(b["seconds"] for _, b in pairs), 1),
            "val_bpc_max_abs_diff": round(max(diffs), 6) if diffs else None,
            "diverged_differently": sum((a["val_bpc"] is None) != (b["val_bpc"] is None) for a, b in pairs)}


if __name__ == "__main__":
    try:
        out = main()
    except ValueError as e:
        sys.exit(f"{Path(__file__).name}: error: {e}")
    print(summary(out))
    print(f"wrote {out['args']['out']} and {out['args']['plot']} in {out['wall_s']} s")
