"""What a search found, at its own budget: the rows of its table and the sentences under it.

    summarise(study, app, baselines, seconds) -> SearchOutcome;  format_table(outcome) -> str

A row (ComparisonRow) is one cell: a searched cell (role "trial") or a baseline. The same type is a
line of the final comparison (nas.search.report), where the cells are retrained with seeds and
scored on the test split; at the search budget only the validation score exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.config import SearchApp, search_app
from nas.search.results import label, new_cells, scored_trials
from nas.search.storage import counts_toward_budget
from nas.trials import TrialRecord


@dataclass(frozen=True)
class ComparisonRow:
    """One cell of a results table: a searched cell (role "trial") or a baseline."""

    label: str
    role: str                       # "trial" or "baseline"
    cell_hash: str
    test_bpc: float | None          # mean over the seeds that did not diverge; None if all diverged (or none)
    test_std: float | None
    n_seeds: int                    # seeds with a test score (0 at the search budget: no test split)
    val_bpc: float | None           # None: diverged
    params: int | None
    chars_per_sec: float | None
    diverged: int = 0               # seeds that diverged
    trial: int | None = None
    hidden_size: int | None = None


@dataclass(frozen=True)
class SearchOutcome:
    study_name: str
    n_trials: int
    states: dict[str, int]
    best: tuple[ComparisonRow, ...]
    baselines: tuple[ComparisonRow, ...]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)   # seconds_by_state: wall seconds per outcome
    comparison: Any = None          # the final comparison (nas.search.report.Comparison), if it ran
    exported: str | None = None     # the export's line: where the best new cell went, or why not


def best_new_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best trials of distinct *new* cells (COMPLETE, not duplicates, not reference cells),
    best first: the searched cells of the table and of the final comparison."""
    seen, out = set(), []
    for t in new_cells(scored_trials(study)):
        if len(out) >= k:
            break
        cell_hash = TrialRecord.of(t).cell_hash
        if cell_hash not in seen:
            seen.add(cell_hash)
            out.append(t)
    return out


def summarise(study: optuna.Study, app: SearchApp | Mapping[str, Any], baselines: dict[str, dict[str, Any]],
              seconds: float) -> SearchOutcome:
    """The search at its budget: trial counts by state, the seconds each state cost, the best *new*
    cells (reference cells found again are no discovery) and the baselines."""
    app = search_app(app)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    costs: dict[str, float] = {}
    for t in trials:
        r = TrialRecord.of(t)
        states[r.word] = states.get(r.word, 0) + 1
        if not r.is_duplicate:  # a duplicate's seconds are its original's
            costs[r.word] = costs.get(r.word, 0.0) + _trial_seconds(t, r)
    best = tuple(_row(t, TrialRecord.of(t)) for t in best_new_trials(study, app.report.top_k))
    base = tuple(ComparisonRow(name, "baseline", r["cell_hash"], None, None, 0, r["val_bpc"], r["params"],
                               r["chars_per_sec"], hidden_size=r["hidden_size"]) for name, r in baselines.items())
    counted = sum(counts_toward_budget(t) for t in trials)  # cells trained: the n_trials budget
    return SearchOutcome(app.study, counted, states, best, base, seconds,
                         {"seconds_by_state": {k: round(v, 1) for k, v in costs.items()}})


def _row(t: FrozenTrial, r: TrialRecord) -> ComparisonRow:
    """A searched cell's row at the search budget."""
    return ComparisonRow(label(t), "trial", r.cell_hash or "?", None, None, 0, t.values[0], r.params,
                         r.chars_per_sec, trial=t.number, hidden_size=r.hidden_size)


def _trial_seconds(t: FrozenTrial, r: TrialRecord) -> float:
    """Wall seconds a trial's worker spent on it (its evaluation's, else start to end)."""
    if r.seconds is not None:
        return float(r.seconds)
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
