"""The trial record: the only code that reads or writes the user attributes nas stores in an Optuna
study (what each trial was and how it ended) and the study's own attributes (its settings, baselines
and final results).

Every key below is spelled here and nowhere else; the rest of nas reads a frozen `TrialRecord` and
writes through these functions. Values are stored unchanged from earlier versions, so old studies load.
(Bookkeeping that describes no result is kept as system attributes by the module that owns it: the
workers' heartbeats in nas.search.storage, the samplers' parents and orders in nas.search.samplers.)

Reading
    Outcome                          how a trial ended, as stored in the trial's "nas_state" attr
    TrialRecord.of(trial)            the record of a FrozenTrial (or of a live optuna.Trial: RUNNING)
    records(study)                   the records of all the study's trials, by number
    TrialRecord.word                 the outcome's value, or Optuna's state in lower case when none is stored
    TrialRecord.is_lost / .is_duplicate / .trained_nothing / .is_reusable / .first_try ... (see the class)

Writing a trial (`trial`: anything with `set_user_attr(key, value)`: an optuna.Trial, or the
storage-level writer of nas.search.optuna_adapter for a trial this process does not run)
    write_cell(trial, CellFacts(...))      what the trial's cell is: hash, json, label, reference...
    write_run_dir(trial, path)             write_screen_seconds(trial, s)     write_seconds(trial, s)
    write_result(trial, result)            an EvalResult's numbers, curves, and complete/diverged
    mark(trial, outcome, reason=None)      the outcome (and why)
    set_training(trial, flag)              the claim on training a cell (nas.search.objective)
    mark_duplicate(trial, earlier)         duplicate_of and the earlier trial's result attrs
    enqueue_retry(study, lost)             enqueue the retry of a lost trial (its params, `retry_of`)

The study (`study`: an optuna.Study)
    stored_config(study) / store_config(study, cfg)           "nas:config": the resolved search config
    store_versions(study, versions)                           "nas:versions": the code of the latest run
    parent_run(study) / set_parent_run(study, run_id)         "mlflow:parent_run_id"
    baseline(study, name, budget) / store_baseline(...) / baselines(study, budget=None)
                                                              "baseline:<name>:<budget>": EvalResult dicts
    final_result(study, cell_hash, seed, budget) / store_final_result(...)
                                                              "final:<hash>:<seed>:<budget>"

This module imports optuna but nothing of nas: the tracker and the exporter, below nas.search, use it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState


class Outcome(enum.StrEnum):
    """How a trial ended: the "nas_state" attr, with these exact strings (old studies store them)."""
    COMPLETE = "complete"      # trained; its value is its val bpc
    DUPLICATE = "duplicate"    # the same cell at the same budget as an earlier trial: its result reused
    PRUNED = "pruned"          # stopped early by the pruner
    DIVERGED = "diverged"      # trained, but the loss blew up (`reason` says how)
    INVALID = "invalid"        # the space built no valid cell
    SCREENED = "screened"      # failed the cheap screen before training
    ERROR = "error"            # an exception in the objective
    LOST = "lost"              # its worker died; not the cell's fault, a retry is enqueued


# Outcomes of a trial that trained nothing (besides LOST): it is replaced so n_trials counts cells trained.
FREE_OUTCOMES = (Outcome.SCREENED, Outcome.INVALID)
# Failed outcomes that a later trial of the same cell at the same budget reuses (deterministic ones).
REUSABLE_FAILURES = (Outcome.DIVERGED, Outcome.SCREENED)

# Keys of trial user attrs.
_STATE, _REASON, _DUPLICATE_OF, _RETRY_OF, _TRAINING = "nas_state", "reason", "duplicate_of", "retry_of", "training"
_DIVERGENCE, _OLD_DIVERGENCE = "divergence", "diverged"   # renamed; studies written before use "diverged"
# What a duplicate trial copies from the trial that trained its cell.
RESULT_KEYS = ("params", "hidden_size", "steps", "tokens", "seconds", "chars_per_sec", "train_bpc",
               "val_bpc", "curve", "train_curve", "divergence", "run_dir")
# Keys of study user attrs.
CONFIG_ATTR, VERSIONS_ATTR, PARENT_RUN_ATTR = "nas:config", "nas:versions", "mlflow:parent_run_id"
_BASELINE, _FINAL = "baseline", "final"


class AttrSink(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class CellFacts:
    """What write_cell records of a trial's (canonical) cell."""
    cell_hash: str
    cell_json: str
    label: str                    # "trial 5 = mut3" / "trial 7 (new)"
    equations: tuple[str, ...]
    budget: str                   # nas.search.objective.budget_key
    code_version: str
    reference: str | None = None  # the reference cell it equals (e.g. "mut3"), None for a new cell


@dataclass(frozen=True)
class TrialRecord:
    """One trial as nas stored it. Fields are None where the trial has no such attr (yet)."""
    number: int
    state: TrialState
    values: tuple[float, ...] | None
    outcome: Outcome | None               # None while running (or for a trial nas never touched)
    reason: str | None = None
    cell: str | None = None               # the reference cell's name, or "new"
    cell_label: str | None = None
    cell_hash: str | None = None
    cell_json: str | None = None
    equations: tuple[str, ...] | None = None
    reference: str | None = None          # absent for a new cell (and in studies before it was written)
    budget: str | None = None
    code_version: str | None = None
    duplicate_of: int | None = None
    retry_of: int | None = None
    training: bool = False
    run_dir: str | None = None
    screen_seconds: float | None = None
    seconds: float | None = None
    params: int | None = None
    hidden_size: int | None = None
    steps: int | None = None
    tokens: int | None = None
    chars_per_sec: float | None = None
    train_bpc: float | None = None
    val_bpc: float | None = None
    curve: tuple[tuple[float, ...], ...] | None = None
    train_curve: tuple[tuple[float, ...], ...] | None = None
    divergence: str | None = None         # why it diverged ("diverged" in studies written before)

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of a FrozenTrial, or of a live optuna.Trial (state RUNNING, no values)."""
        ua = trial.user_attrs
        stored = ua.get(_STATE)
        values = getattr(trial, "values", None)
        return cls(number=trial.number, state=getattr(trial, "state", TrialState.RUNNING),
                   values=None if values is None else tuple(values),
                   outcome=Outcome(stored) if stored in _OUTCOMES else None,
                   equations=_tuple(ua.get("equations")), curve=_curve(ua.get("curve")),
                   train_curve=_curve(ua.get("train_curve")), training=bool(ua.get(_TRAINING)),
                   divergence=ua.get(_DIVERGENCE, ua.get(_OLD_DIVERGENCE)),
                   **{k: ua[k] for k in _PLAIN_KEYS if k in ua})

    @property
    def word(self) -> str:
        """The outcome as reports print it: the stored outcome, else Optuna's state ("running", "fail")."""
        return self.outcome.value if self.outcome is not None else self.state.name.lower()

    @property
    def is_duplicate(self) -> bool:
        return self.duplicate_of is not None

    @property
    def first_try(self) -> int:
        """The number of the trial this one retries (a lost trial's retry), else its own number."""
        return self.number if self.retry_of is None else self.retry_of

    @property
    def is_lost(self) -> bool:
        """Failed because its worker died: says nothing about its cell."""
        return self.state == TrialState.FAIL and self.outcome == Outcome.LOST

    @property
    def trained_nothing(self) -> bool:
        """Finished without training a cell of its own: a duplicate, a screened or an invalid cell."""
        return self.state.is_finished() and (self.is_duplicate or self.outcome in FREE_OUTCOMES)

    @property
    def is_reusable(self) -> bool:
        """A finished result that a later trial of the same cell and budget reuses instead of training."""
        return self.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            self.state == TrialState.FAIL and self.outcome in REUSABLE_FAILURES)

    def metrics(self) -> dict[str, Any]:
        """The stored result numbers by their attr names (for reports and MLflow), None ones left out."""
        return {k: getattr(self, k) for k in RESULT_KEYS if getattr(self, k) is not None}


_OUTCOMES = frozenset(o.value for o in Outcome)
# The fields of TrialRecord stored as they are, under their own name.
_PLAIN_KEYS = tuple(f.name for f in fields(TrialRecord)
                    if f.name not in ("number", "state", "values", "outcome", "equations", "training", "curve",
                                      "train_curve", "divergence"))


def _tuple(value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _curve(value: Sequence[Sequence[float]] | None) -> tuple[tuple[float, ...], ...] | None:
    return None if value is None else tuple(map(tuple, value))


def records(study: optuna.Study) -> list[TrialRecord]:
    """The records of all the study's trials, in trial-number order."""
    return [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]


# ---- writing a trial ----------------------------------------------------------------------------------

def write_cell(trial: AttrSink, facts: CellFacts) -> None:
    """Record what the trial's cell is (before it is trained, so that other workers see the claim)."""
    for key, value in (("cell", facts.reference or "new"), ("cell_label", facts.label),
                       ("cell_hash", facts.cell_hash), ("equations", list(facts.equations)),
                       ("cell_json", facts.cell_json), ("budget", facts.budget),
                       ("code_version", facts.code_version)):
        trial.set_user_attr(key, value)
    if facts.reference:
        trial.set_user_attr("reference", facts.reference)


def write_run_dir(trial: AttrSink, path: str) -> None:
    trial.set_user_attr("run_dir", path)


def write_screen_seconds(trial: AttrSink, seconds: float) -> None:
    trial.set_user_attr("screen_seconds", seconds)


def write_seconds(trial: AttrSink, seconds: float) -> None:
    trial.set_user_attr("seconds", seconds)


def write_result(trial: AttrSink, result: Any) -> None:
    """Record an EvalResult (nas.train): its numbers and curves, and complete or diverged (with why)."""
    for key in ("params", "hidden_size", "steps", "tokens", "seconds", "chars_per_sec", "train_bpc",
                "val_bpc", _DIVERGENCE):
        trial.set_user_attr(key, getattr(result, key))
    trial.set_user_attr("curve", [list(p) for p in result.curve])
    trial.set_user_attr("train_curve", [list(p) for p in result.train_curve])
    if result.divergence:
        mark(trial, Outcome.DIVERGED, result.divergence)
    else:
        mark(trial, Outcome.COMPLETE)


def mark(trial: AttrSink, outcome: Outcome, reason: str | None = None) -> None:
    """Record how the trial ended and, for a failure or a prune, why."""
    trial.set_user_attr(_STATE, Outcome(outcome).value)
    if reason is not None:
        trial.set_user_attr(_REASON, reason)


def set_training(trial: AttrSink, training: bool) -> None:
    trial.set_user_attr(_TRAINING, training)


def mark_duplicate(trial: AttrSink, earlier: FrozenTrial) -> None:
    """Record that the trial's cell is the one `earlier` trained, and copy its result attrs (not its
    outcome: the caller marks that, as a duplicate, or failed or pruned like the earlier trial)."""
    trial.set_user_attr(_DUPLICATE_OF, earlier.number)
    ua = earlier.user_attrs
    for key in RESULT_KEYS:
        if key == _DIVERGENCE and key not in ua and _OLD_DIVERGENCE in ua:
            trial.set_user_attr(key, ua[_OLD_DIVERGENCE])
        elif key in ua:
            trial.set_user_attr(key, ua[key])


def enqueue_retry(study: optuna.Study, lost: FrozenTrial) -> None:
    """Enqueue the retry of the lost trial `lost`: its params, and which trial it retries (the first
    try of its cell, also for the retry of a retry)."""
    study.enqueue_trial(dict(lost.params), user_attrs={_RETRY_OF: TrialRecord.of(lost).first_try},
                        skip_if_exists=False)


# ---- the study ----------------------------------------------------------------------------------------

def stored_config(study: optuna.Study) -> dict[str, Any] | None:
    """The resolved search config stored when the study was created, or None (not made by nas-search)."""
    return study.user_attrs.get(CONFIG_ATTR)


def store_config(study: optuna.Study, cfg: Mapping[str, Any]) -> None:
    study.set_user_attr(CONFIG_ATTR, dict(cfg))


def store_versions(study: optuna.Study, versions: Mapping[str, str]) -> None:
    """The code versions of the latest run on this study (nas.provenance.versions)."""
    study.set_user_attr(VERSIONS_ATTR, dict(versions))


def parent_run(study: optuna.Study) -> str | None:
    """The MLflow run id of the search's parent run, shared by all the study's workers."""
    return study.user_attrs.get(PARENT_RUN_ATTR)


def set_parent_run(study: optuna.Study, run_id: str) -> None:
    study.set_user_attr(PARENT_RUN_ATTR, run_id)


def _result_dict(value: dict[str, Any]) -> dict[str, Any]:
    # EvalResult dicts stored before the rename carry "diverged" (the reason): read it as "divergence".
    if _OLD_DIVERGENCE in value and _DIVERGENCE not in value:
        value = {**value, _DIVERGENCE: value[_OLD_DIVERGENCE]}
        del value[_OLD_DIVERGENCE]
    return value


def baseline(study: optuna.Study, name: str, budget: str) -> dict[str, Any] | None:
    """The stored result (an EvalResult dict) of baseline cell `name` at budget key `budget`, or None."""
    value = study.user_attrs.get(f"{_BASELINE}:{name}:{budget}")
    return None if value is None else _result_dict(value)


def store_baseline(study: optuna.Study, name: str, budget: str, result: Mapping[str, Any]) -> None:
    study.set_user_attr(f"{_BASELINE}:{name}:{budget}", dict(result))


def baselines(study: optuna.Study, budget: str | None = None) -> dict[str, dict[str, Any]]:
    """The stored baseline results ({name: EvalResult dict}), for one budget key or all."""
    out = {}
    for key, value in study.user_attrs.items():
        if key.startswith(f"{_BASELINE}:"):
            _, name, b = key.split(":", 2)
            if budget is None or b == budget:
                out[name] = _result_dict(value)
    return out


def final_result(study: optuna.Study, cell_hash: str, seed: int, budget: str) -> dict[str, Any] | None:
    """The cached final-comparison result of a cell retrained with `seed` at budget key `budget`, or None."""
    value = study.user_attrs.get(f"{_FINAL}:{cell_hash}:{seed}:{budget}")
    return None if value is None else _result_dict(value)


def store_final_result(study: optuna.Study, cell_hash: str, seed: int, budget: str,
                       result: Mapping[str, Any]) -> None:
    study.set_user_attr(f"{_FINAL}:{cell_hash}:{seed}:{budget}", dict(result))
