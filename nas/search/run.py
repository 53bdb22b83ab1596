"""The search driver: create (or resume) the study, run its workers, train the baselines, summarise.

    search(cfg) -> SearchOutcome

With workers=1 the trials run in this process (no start-up cost); with workers=N, N worker
processes (`python -m nas.search.worker`) share the study through its storage, each pinned to a
device: GPU i mod n_gpus when GPUs exist, else the CPU with one torch thread each.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.search.results import scored_trials
from nas.search.study import open_study
from nas.search.worker import _pruner, build_objective, pin_device, run_trials, trial_logger

log = logging.getLogger("nas.search")


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a searched cell or a baseline."""

    label: str
    cell_hash: str
    val_bpc: float | None
    params: int | None
    hidden_size: int | None
    chars_per_sec: float | None
    role: str                       # "trial" or "baseline"
    trial: int | None = None


@dataclass(frozen=True)
class SearchOutcome:
    study_name: str
    n_trials: int
    states: dict[str, int]
    best: tuple[Row, ...]
    baselines: tuple[Row, ...]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def search(cfg: dict[str, Any], progress: bool | None = None) -> SearchOutcome:
    """Run (or resume) the search described by `cfg` (a resolved SearchApp as a plain dict)."""
    from nas.search.controllers import is_multi_objective
    from nas.tracking import Tracker

    start = time.perf_counter()
    multi = is_multi_objective(cfg["controller"]["name"])
    study = open_study(cfg, multi)
    tracker = Tracker.from_config(cfg)
    tracker.start_search(study, cfg)  # before the workers: they attach their runs to its parent run
    show = sys.stderr.isatty() if progress is None else progress
    if cfg["workers"] == 0:
        _wait_for_workers(study, cfg, show)
    elif cfg["workers"] == 1:
        _run_in_process(study, cfg, show)
    else:
        _run_processes(study, cfg, show)
    baselines = run_baselines(study, cfg, tracker, progress=show)
    outcome = summarise(study, cfg, baselines, time.perf_counter() - start)
    if cfg["report"]["enabled"]:
        from nas.report import final_comparison

        comparison = final_comparison(study, cfg, tracker, progress=show)
        tracker.log_comparison(study, comparison)
        outcome = SearchOutcome(**{**outcome.__dict__, "extra": {"comparison": comparison}})
    tracker.end_search(study, outcome)
    return outcome


def _run_in_process(study: optuna.Study, cfg: dict[str, Any], show: bool) -> None:
    device = pin_device(cfg["device"], cfg["threads"])
    objective, sampler = build_objective(cfg, device)
    study.sampler, study.pruner = sampler, _pruner(cfg)
    bar = _bar(study, cfg, show)
    log_trial = trial_logger(study, cfg)

    def on_trial(t) -> None:
        log_trial(t)
        _tick(bar, study, cfg)

    run_trials(study, objective, cfg["storage"], on_trial=on_trial)
    if bar is not None:
        bar.close()


def _run_processes(study: optuna.Study, cfg: dict[str, Any], show: bool) -> None:
    threads = cfg["threads"] or 1
    procs = []
    for i in range(cfg["workers"]):
        cmd = [sys.executable, "-m", "nas.search.worker", "--study", cfg["study"], "--out-dir", cfg["out_dir"],
               "--device", cfg["device"], "--threads", str(threads), "--index", str(i)]
        if cfg["storage"]["url"]:
            cmd += ["--storage", cfg["storage"]["url"]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(cmd, env=env))
    bar = _bar(study, cfg, show)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            _tick(bar, study, cfg)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if bar is not None:
            bar.close()
    failed = [i for i, p in enumerate(procs) if p.returncode not in (0, None)]
    if failed:
        log.warning("worker(s) %s exited with an error; rerun the same command to resume the study", failed)


def _wait_for_workers(study: optuna.Study, cfg: dict[str, Any], show: bool, poll: float = 5.0) -> None:
    """workers=0: the trials are run by nas-worker processes elsewhere (e.g. a SLURM array); wait until
    the study's budget is finished, reaping trials whose workers died."""
    from nas.search.storage import reap_lost

    bar = _bar(study, cfg, show)
    try:
        while True:
            reap_lost(study, cfg["storage"]["grace_period"])
            trials = study.get_trials(deepcopy=False)
            _tick(bar, study, cfg)
            if all(t.state.is_finished() for t in trials):
                return
            time.sleep(poll)
    finally:
        if bar is not None:
            bar.close()


def _bar(study: optuna.Study, cfg: dict[str, Any], show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg["n_trials"], desc=f"search {cfg['study']}", unit="trial", dynamic_ncols=True)
    _tick(bar, study, cfg)
    return bar


def _tick(bar, study: optuna.Study, cfg: dict[str, Any]) -> None:
    if bar is None:
        return
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state.is_finished() and t.user_attrs.get("nas_state") != "lost" for t in trials)
    bar.update(done - bar.n)
    best = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
    if best:
        bar.set_postfix(best_bpc=f"{min(best):.4f}")


def run_baselines(study: optuna.Study, cfg: dict[str, Any], tracker=None,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """Train each baseline cell once per budget (same trainer, data and seed as the trials), in
    parallel over `workers` processes; the results are kept in the study, so a rerun or a second
    search at the same budget reuses them."""
    from nas.cell import known_cell
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.search.objective import budget_key
    from nas.search.pool import TrainJob, run_jobs

    corpus = load_corpus(cfg["data"]["path"], cfg["data"]["cache_dir"])
    key = budget_key(TrainConfig(**cfg["trainer"]), cfg["seed"], corpus.source_hash)
    todo = [name for name in cfg["baselines"] if f"baseline:{name}:{key}" not in study.user_attrs]
    jobs = [TrainJob(f"baseline {name}", known_cell(name).to_json(indent=None), cfg, cfg["seed"],
                     str((Path(cfg["out_dir"]) / "baselines" / f"{name}-{key}").resolve()), key, test=False)
            for name in todo]
    for name, data in zip(todo, run_jobs(jobs, cfg, progress, "baselines")):
        study.set_user_attr(f"baseline:{name}:{key}", data)
    out = {}
    for name in cfg["baselines"]:
        out[name] = study.user_attrs[f"baseline:{name}:{key}"]
        if tracker is not None:
            tracker.log_baseline(study, name, out[name], cfg)  # once per budget: it skips logged ones
    return out


def summarise(study: optuna.Study, cfg: dict[str, Any], baselines: dict[str, dict[str, Any]],
              seconds: float) -> SearchOutcome:
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        key = t.user_attrs.get("nas_state") or t.state.name.lower()
        states[key] = states.get(key, 0) + 1
    done, seen = [], set()
    for t in scored_trials(study):  # best first; the same cell trained twice in parallel shows once
        if t.user_attrs.get("cell_hash") not in seen:
            seen.add(t.user_attrs.get("cell_hash"))
            done.append(t)
    best = tuple(Row(f"trial {t.number}", t.user_attrs.get("cell_hash", "?"), t.values[0],
                     t.user_attrs.get("params"), t.user_attrs.get("hidden_size"),
                     t.user_attrs.get("chars_per_sec"), "trial", t.number) for t in done[:cfg["report"]["top_k"]])
    base = tuple(Row(name, r["cell_hash"], r["val_bpc"], r["params"], r["hidden_size"], r["chars_per_sec"],
                     "baseline") for name, r in baselines.items())
    counted = sum(v for k, v in states.items() if k != "lost")
    return SearchOutcome(cfg["study"], counted, states, best, base, seconds)


def format_table(outcome: SearchOutcome) -> str:
    """The terminal table: best cells and baselines at the same budget, best first."""
    rows = sorted(outcome.best + outcome.baselines,
                  key=lambda r: (r.val_bpc is None, r.val_bpc if r.val_bpc is not None else 0.0))
    head = f"{'cell':<12} {'role':<8} {'val bpc':>8} {'params':>9} {'hidden':>6} {'chars/s':>9}  hash"
    lines = [head, "-" * len(head)]
    for r in rows:
        bpc = "diverged" if r.val_bpc is None else f"{r.val_bpc:.4f}"
        lines.append(f"{r.label:<12} {r.role:<8} {bpc:>8} {r.params or 0:>9,} {r.hidden_size or 0:>6} "
                     f"{r.chars_per_sec or 0:>9,.0f}  {r.cell_hash}")
    states = ", ".join(f"{k} {v}" for k, v in sorted(outcome.states.items()))
    lines.append(f"study {outcome.study_name}: {outcome.n_trials} trials ({states}) in {outcome.seconds:.0f} s")
    return "\n".join(lines)

