"""Reading a finished (or running) study: its trials' cells, weights, baselines and final scores.

Shared by the exporter (`nas-export`), the report and the end-of-search summary, so that "the best
trial" and "the baselines at this budget" mean the same thing everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.cell import CellError, CellSpec, identify
from nas.search.objective import cell_label
from nas.trials import TrialRecord, records, stored_config
from nas.trials import baselines as stored_baselines

log = logging.getLogger("nas.search")


class ResultError(ValueError):
    """The study holds no such result."""


def scored_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that trained their own cell (duplicates point at an earlier trial), best first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not TrialRecord.of(t).is_duplicate]
    return sorted(done, key=lambda t: (t.values[0], t.number))


def reference_of(t: FrozenTrial) -> str | None:
    """The reference cell (e.g. "mut3") that a trial's cell equals, or None for a new cell. Read from the
    trial (recorded when it ran) or, for trials of older studies, from its cell."""
    record = TrialRecord.of(t)
    if record.reference is not None:
        return record.reference
    if record.cell_json is None:
        return None

    try:
        return identify(trial_cell(t))
    except CellError:
        return None


def label(t: FrozenTrial) -> str:
    """'trial 5 = mut3' or 'trial 7 (new)'."""

    return cell_label(t.number, reference_of(t))


def trial_line(t: FrozenTrial, best: FrozenTrial | None) -> str:
    """The progress line of a finished trial: 'trial 5 = mut3: complete, val bpc 1.9876; best so far
    1.9512 (trial 2 (new))'; a failure gives its reason, a duplicate the trial it repeats."""
    record = TrialRecord.of(t)
    name = label(t) if record.cell_json is not None else f"trial {t.number}"
    if t.state == TrialState.COMPLETE:
        what = f"val bpc {t.values[0]:.4f}"
        if record.is_duplicate:
            what += f" (same cell as trial {record.duplicate_of})"
    else:
        what = record.reason or "no reason recorded"
    so_far = f"; best so far {best.values[0]:.4f} ({label(best)})" if best is not None else ""
    return f"{name}: {record.word}, {what}{so_far}"


def best_so_far(trials: list[FrozenTrial], number: int | None = None) -> FrozenTrial | None:
    """The complete trial with the lowest (first) value, among those numbered <= `number` if given."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and (number is None or t.number <= number)]
    return min(done, key=lambda t: (t.values[0], t.number), default=None)


def new_cells(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials whose cell is not a reference cell: what a search discovered. A cell recorded by an
    older version that today's rules refuse (e.g. one with no trainable weight) is left out, with a
    warning: it cannot be retrained or exported."""

    out = []
    for t in trials:
        if reference_of(t) is not None:
            continue
        try:
            trial_cell(t)
        except CellError as e:
            log.warning("trial %d: its cell is no longer valid (%s); left out", t.number, e)
            continue
        out.append(t)
    return out


def best_trial(study: optuna.Study, new_only: bool = True) -> FrozenTrial:
    """The best scored trial; with new_only (the default), the best whose cell is not a reference
    cell (a search seeded with the reference cells finds them again: that is no discovery)."""
    trials = scored_trials(study)
    if new_only and trials and not new_cells(trials):
        best = trials[0]
        raise ResultError(f"study {study.study_name!r} has completed no new cell yet: its best trial is "
                          f"{label(best)}, a reference cell (export it with trial={best.number})")
    if new_only:
        trials = new_cells(trials)
    if not trials:
        states = {}
        for r in records(study):
            states[r.word] = states.get(r.word, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(states.items())) or "no trials"
        raise ResultError(f"study {study.study_name!r} has no completed trial yet ({summary})")
    return trials[0]


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    everything = study.get_trials(deepcopy=False)
    if not 0 <= number < len(everything):
        raise ResultError(f"study {study.study_name!r} has no trial {number} (it has {len(everything)})")
    t = everything[number]
    record = TrialRecord.of(t)
    if record.cell_json is None:
        raise ResultError(f"trial {number} of study {study.study_name!r} has no cell "
                          f"({record.word}: {_or(record.reason, 'no reason recorded')})")
    return t


def trial_by_hash(study: optuna.Study, cell_hash: str) -> FrozenTrial:
    matches = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).cell_hash == cell_hash]
    if not matches:
        raise ResultError(f"no trial of study {study.study_name!r} has cell hash {cell_hash!r}")
    done = [t for t in matches if t.state == TrialState.COMPLETE]
    return (sorted(done, key=lambda t: t.values[0]) or matches)[0]


def trial_cell(t: FrozenTrial) -> CellSpec:
    cell_json = TrialRecord.of(t).cell_json
    if cell_json is None:
        raise KeyError("cell_json")  # as reading the missing attr did: callers check for a cell first
    return CellSpec.from_json(cell_json)


def trial_weights(study: optuna.Study, t: FrozenTrial) -> dict[str, Any] | None:
    """The trained CellRNN state dict of a trial (of the trial it duplicates), if saved on this machine."""
    record = TrialRecord.of(t)
    if record.is_duplicate:
        record = TrialRecord.of(study.get_trials(deepcopy=False)[record.duplicate_of])
    path = Path(_or(record.run_dir, "")) / "weights.pt"
    return rnn_state_dict(path) if path.is_file() else None


def rnn_state_dict(path: Path) -> dict[str, Any]:
    """The CellRNN part (`rnn.*`) of a saved CharLM state dict, with the prefix removed."""
    import torch

    full = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len("rnn."):]: v for k, v in full.items() if k.startswith("rnn.")}


def export_bundle(study: optuna.Study, number: int | None = None, cell_hash: str | None = None) -> dict[str, Any]:
    """What nas-export needs of a study's trial (best by default): spec, weights, metrics, origin, name."""
    if number is not None:
        t = trial_by_number(study, number)
    elif cell_hash:
        t = trial_by_hash(study, cell_hash)
    else:
        t = best_trial(study)
    cfg, record = stored_config(study) or {}, TrialRecord.of(t)
    metrics = {label(t): _metrics(record.metrics())}
    for name, r in stored_baselines(study, record.budget).items():
        metrics[name] = _metrics(r)
    origin = {"study": study.study_name, "trial": t.number,
              "search space": cfg.get("search_space", {}).get("name"),
              "controller": cfg.get("controller", {}).get("name"),
              "state": record.outcome.value if record.outcome else None, "budget": record.budget,
              "reference cell": reference_of(t) or "none (a new cell)"}
    return {"spec": trial_cell(t), "weights": trial_weights(study, t), "metrics": metrics,
            "origin": origin, "name": f"{study.study_name}-trial{t.number}", "label": label(t)}


def _metrics(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("val_bpc", "test_bpc", "params", "hidden_size", "chars_per_sec")
            if r.get(k) is not None}


def _or(value: Any, default: Any) -> Any:
    """`value`, or `default` where the attr is missing (None)."""
    return default if value is None else value
