"""The search driver: create (or resume) the study, run its workers, train the baselines, summarise.

    search(cfg) -> SearchOutcome

With workers=1 the trials run in this process (no start-up cost); with workers=N, N worker
processes (`python -m nas.search.worker`) share the study through its storage, each pinned to a
device: GPU i mod n_gpus when GPUs exist, else the CPU with one torch thread each.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search.results import best_so_far, label, scored_trials, trial_line
from nas.search.retrain import scores as _scores
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
    from nas.provenance import versions

    study.set_user_attr("nas:versions", versions())  # the code of the latest run on this study
    from nas.search.worker import local_workers

    cfg = {**cfg, "workers": local_workers(cfg["workers"], cfg.get("workers_per_device"), cfg["device"])}
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
        from nas.search.report import final_comparison

        comparison = final_comparison(study, cfg, tracker, progress=show)
        tracker.log_comparison(study, comparison)
        outcome = SearchOutcome(**{**outcome.__dict__, "extra": {**outcome.extra, "comparison": comparison}})
    tracker.end_search(study, outcome)
    return outcome


def _run_in_process(study: optuna.Study, cfg: dict[str, Any], show: bool) -> None:
    device = pin_device(cfg["device"], cfg["threads"])
    objective, sampler = build_objective(cfg, device)
    study.sampler, study.pruner = sampler, _pruner(cfg)
    bar = _bar(study, cfg, show)
    log_trial = trial_logger(study, cfg, announce=False)  # _tick announces (or shows the bar)

    def on_trial(t) -> None:
        log_trial(t)
        _tick(bar, study, cfg)

    try:
        run_trials(study, objective, cfg["storage"], on_trial=on_trial)
    finally:
        if bar is not None:
            bar.close()


def _run_processes(study: optuna.Study, cfg: dict[str, Any], show: bool, reap_every: float = 5.0) -> None:
    """workers=N: N local worker processes share the study. Meanwhile this process reaps the trials of
    workers that died (the others may be waiting on such a trial's cell). Raises WorkerFailed, once
    all have ended, naming each worker that died or failed and why; finished trials stay in the study."""
    from nas.search.storage import reap_lost
    from nas.search.worker import LocalWorker, WorkerFailed

    threads = cfg["threads"] or 1
    workers = [LocalWorker(cfg, i, threads) for i in range(cfg["workers"])]
    bar, reaped = _bar(study, cfg, show), time.monotonic()
    try:
        while any(w.running() for w in workers):  # running() also collects a dead worker's zombie
            time.sleep(1.0)
            if time.monotonic() - reaped > reap_every:
                reaped = time.monotonic()
                try:
                    reap_lost(study, cfg["storage"]["grace_period"])
                except OSError as e:  # a full disk: the workers meet it too and say so
                    log.warning("could not reap lost trials: %s", e)
            _tick(bar, study, cfg)
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


def _wait_for_workers(study: optuna.Study, cfg: dict[str, Any], show: bool, poll: float = 5.0) -> None:
    """workers=0: the trials are run by nas-worker processes elsewhere (e.g. a SLURM array); wait until
    the study's budget is finished, reaping trials whose workers died. Polling all along makes this
    the reaper that judges other hosts' heartbeats soonest (see nas.search.storage on clock skew)."""
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
    """The search's progress bar; None when not shown (then each trial is announced in a line)."""
    if not show:
        _resumed(study)
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg["n_trials"], desc=f"search {cfg['study']}", unit="trial", dynamic_ncols=True)
    _tick(bar, study, cfg)
    return bar


def _tick(bar, study: optuna.Study, cfg: dict[str, Any]) -> None:
    """Progress: the bar on a terminal; otherwise one log line per newly finished trial."""
    trials = study.get_trials(deepcopy=False)
    if bar is None:
        _announce(study.study_name, trials)
        return
    from nas.search.storage import counts_toward_budget

    done = sum(t.state.is_finished() and counts_toward_budget(t) for t in trials)
    bar.update(done - bar.n)
    best = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
    if best:
        bar.set_postfix(best_bpc=f"{min(best):.4f}")


# What this process has announced: (study, trial number), and each study's best announced trial, so
# that "best so far" means the best of the lines above it.
_announced: set[tuple[str, int]] = set()
_best: dict[str, FrozenTrial] = {}


def _resumed(study: optuna.Study) -> None:
    """A resumed study: one line for the trials finished before this run, instead of one each."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and (study.study_name, t.number) not in _announced]
    if done:
        _announce_quietly(study.study_name, done)
        best = _best.get(study.study_name)
        so_far = f"; best so far {best.values[0]:.4f} ({label(best)})" if best is not None else ""
        log.info("study %s: %d trials finished before this run%s", study.study_name, len(done), so_far)


def _announce(study_name: str, trials) -> None:
    """Log each finished trial once: number and cell, state, val bpc or reason, best so far."""
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.is_finished() and (study_name, t.number) not in _announced:
            _announce_quietly(study_name, [t])
            log.info(trial_line(t, _best.get(study_name)))


def _announce_quietly(study_name: str, trials) -> None:
    _announced.update((study_name, t.number) for t in trials)
    best = best_so_far([*trials, *([_best[study_name]] if study_name in _best else [])])
    if best is not None:
        _best[study_name] = best


def run_baselines(study: optuna.Study, cfg: dict[str, Any], tracker=None,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """Train each baseline cell once per budget (same trainer, data and seed as the trials), in
    parallel over `workers` processes; the results are kept in the study, so a rerun or a second
    search at the same budget reuses them."""
    from nas.cell import known_cell
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.search.objective import budget_key
    from nas.search.retrain import TrainJob, run_jobs

    corpus = load_corpus(cfg["data"]["path"], cfg["data"]["cache_dir"], cfg["data"].get("format", "auto"))
    key = budget_key(TrainConfig(**cfg["trainer"]), cfg["seed"], corpus.source_hash)
    todo = [name for name in cfg["baselines"] if f"baseline:{name}:{key}" not in study.user_attrs]
    reused = {name: "trained by an earlier run of this study" for name in cfg["baselines"] if name not in todo}
    for name, data in _baselines_from_trials(study, todo, key, cfg["seed"]).items():
        study.set_user_attr(f"baseline:{name}:{key}", data)
        todo.remove(name)
        reused[name] = f"trained as trial {data['from_trial']}"
    if not progress:
        for name, source in reused.items():
            log.info("baselines: baseline %s seed %d: %s (%s)", name, cfg["seed"],
                     _scores(study.user_attrs[f"baseline:{name}:{key}"]), source)
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


def _baselines_from_trials(study: optuna.Study, names: list[str], budget: str,
                           seed: int) -> dict[str, dict[str, Any]]:
    """Baselines that a trial already trained (a search seeded with the reference cells trains them
    as trials, with the same trainer, data, seed and budget): their results, not a second training."""
    from nas.cell import known_cell

    wanted = {known_cell(name).canonical_hash(): name for name in names}
    found: dict[str, dict[str, Any]] = {}
    for t in scored_trials(study):
        name = wanted.get(t.user_attrs.get("cell_hash"))
        if name is None or name in found or t.user_attrs.get("budget") != budget:
            continue
        ua = t.user_attrs
        found[name] = {**{k: ua.get(k) for k in ("params", "hidden_size", "steps", "tokens", "seconds",
                                                 "chars_per_sec", "train_bpc", "divergence", "run_dir")},
                       "val_bpc": t.values[0],
                       "cell_hash": ua["cell_hash"], "cell_name": name, "test_bpc": None, "seed": seed,
                       "curve": ua.get("curve") or [], "train_curve": ua.get("train_curve") or [],
                       "budget": budget, "from_trial": t.number}
    return found


def summarise(study: optuna.Study, cfg: dict[str, Any], baselines: dict[str, dict[str, Any]],
              seconds: float) -> SearchOutcome:
    """The search at its budget: trial counts by state, the seconds each state cost, the best *new*
    cells (reference cells found again are no discovery) and the baselines."""
    from nas.search.results import label, new_cells

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    costs: dict[str, float] = {}
    for t in trials:
        key = t.user_attrs.get("nas_state") or t.state.name.lower()
        states[key] = states.get(key, 0) + 1
        if "duplicate_of" not in t.user_attrs:  # a duplicate's seconds are its original's
            costs[key] = costs.get(key, 0.0) + _trial_seconds(t)
    done, seen = [], set()
    for t in new_cells(scored_trials(study)):  # best first; one row per cell
        if t.user_attrs.get("cell_hash") not in seen:
            seen.add(t.user_attrs.get("cell_hash"))
            done.append(t)
    best = tuple(Row(label(t), t.user_attrs.get("cell_hash", "?"), t.values[0],
                     t.user_attrs.get("params"), t.user_attrs.get("hidden_size"),
                     t.user_attrs.get("chars_per_sec"), "trial", t.number) for t in done[:cfg["report"]["top_k"]])
    base = tuple(Row(name, r["cell_hash"], r["val_bpc"], r["params"], r["hidden_size"], r["chars_per_sec"],
                     "baseline") for name, r in baselines.items())
    from nas.search.storage import counts_toward_budget

    counted = sum(counts_toward_budget(t) for t in trials)  # cells trained: the n_trials budget
    return SearchOutcome(cfg["study"], counted, states, best, base, seconds,
                         {"seconds_by_state": {k: round(v, 1) for k, v in costs.items()}})


def _trial_seconds(t) -> float:
    """Wall seconds a trial's worker spent on it (its evaluation's, else start to end)."""
    if t.user_attrs.get("seconds") is not None:
        return float(t.user_attrs["seconds"])
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return 0.0


def verdicts(outcome: SearchOutcome) -> list[str]:
    """Did the search's best new cell beat each baseline at the search budget (one seed, val bpc)?
    Plain sentences; the final comparison (several seeds, test split) is what settles it."""
    if not outcome.best:
        return ["no new cell completed: the search found nothing to compare with the baselines"]
    best = outcome.best[0]
    out = []
    for b in outcome.baselines:
        if b.val_bpc is None:
            out.append(f"{best.label} vs {b.label}: the baseline diverged")
            continue
        diff = best.val_bpc - b.val_bpc
        word = "beats" if diff < 0 else "does not beat"
        out.append(f"{best.label} {word} {b.label} at the search budget (val bpc {best.val_bpc:.4f} vs "
                   f"{b.val_bpc:.4f}, {diff:+.4f}; one seed)")
    return out


def format_table(outcome: SearchOutcome) -> str:
    """The terminal table: the best new cells and the baselines at the same budget, best first; then
    where the search's time went and whether its best new cell beat each baseline."""
    rows = sorted(outcome.best + outcome.baselines,
                  key=lambda r: (r.val_bpc is None, r.val_bpc if r.val_bpc is not None else 0.0))
    width = max([len(r.label) for r in rows] + [12])
    head = f"{'cell':<{width}} {'role':<8} {'val bpc':>8} {'params':>9} {'hidden':>6} {'chars/s':>9}  hash"
    lines = [head, "-" * len(head)]
    for r in rows:
        bpc = "diverged" if r.val_bpc is None else f"{r.val_bpc:.4f}"
        lines.append(f"{r.label:<{width}} {r.role:<8} {bpc:>8} {r.params or 0:>9,} {r.hidden_size or 0:>6} "
                     f"{r.chars_per_sec or 0:>9,.0f}  {r.cell_hash}")
    states = ", ".join(f"{k} {v}" for k, v in sorted(outcome.states.items()))
    total = sum(outcome.states.values())
    lines.append(f"study {outcome.study_name}: {outcome.n_trials} cells trained, {total} trials ({states}) in "
                 f"{outcome.seconds:.0f} s")
    costs = outcome.extra.get("seconds_by_state") or {}
    total = sum(costs.values())
    if total > 0:
        spent = ", ".join(f"{k} {v:.0f} s ({v / total:.0%})" for k, v in sorted(costs.items()))
        lines.append(f"trial time by state: {spent}")
    lines += verdicts(outcome)
    return "\n".join(lines)
