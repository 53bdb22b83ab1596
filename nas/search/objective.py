"""One trial: sample a cell, validate, deduplicate, train, report, return val bpc.

    sample (the controller, through the space) -> CellSpec (invalid: the trial fails with the reason)
    -> canonical hash -> same cell already evaluated at the same budget? reuse, tag duplicate
    -> evaluate(spec, trainer, seed), reporting intermediate val bpc to the pruner
    -> val bpc (minimised), or (val bpc, parameter count) for multi-objective controllers

What each finished trial carries (user attrs): `nas_state` (complete / pruned / invalid / diverged /
error / lost / duplicate), `reason` for failures, `cell_hash`, `cell_json`, `budget`, and the
evaluation's numbers (params, hidden_size, seconds, chars_per_sec, train_bpc, curve).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.cell import CellError, CellSpec
from nas.config import TrainConfig

# TrainConfig fields that change where or how visibly a cell trains, not its score.
_NOT_BUDGET = {"device", "threads", "progress", "tf32", "bf16", "eval_batch_size"}


class TrialFailed(Exception):
    """The trial ends as FAIL; `state` and the message are recorded on it."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state = state


def budget_key(cfg: TrainConfig, seed: int, corpus_hash: str) -> str:
    """Identity of 'the same budget': everything that can change a cell's score."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in _NOT_BUDGET}
    blob = json.dumps({"trainer": fields, "seed": seed, "corpus": corpus_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Objective:
    space: Callable[[optuna.trial.BaseTrial], CellSpec]
    trainer: TrainConfig
    corpus: Any                        # nas.data.Corpus
    seed: int
    multi_objective: bool = False
    evaluate: Callable[..., Any] | None = None  # injectable for tests; default nas.train.evaluate
    on_result: Callable[..., None] | None = None  # (trial, spec, EvalResult) hook
    trials_dir: Path | None = None     # each trial's run (weights, sample, cell) goes to trials_dir/NNNNN

    def __post_init__(self) -> None:
        self.budget = budget_key(self.trainer, self.seed, self.corpus.source_hash)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            spec = self.space(trial)
        except CellError as e:
            raise TrialFailed("invalid", str(e)) from None
        h = spec.canonical_hash()
        for key, value in (("cell_hash", h), ("cell_json", spec.to_json(indent=None)),
                           ("budget", self.budget)):
            trial.set_user_attr(key, value)
        earlier = self._earlier_result(trial.study, h, trial.number)
        if earlier is not None:
            return self._reuse(trial, earlier)
        result = self._evaluate(spec, trial)
        self._record(trial, result)
        if self.on_result is not None:
            self.on_result(trial, spec, result)
        if result.diverged is not None:
            raise TrialFailed("diverged", result.diverged)
        return (result.val_bpc, float(result.params)) if self.multi_objective else result.val_bpc

    def _evaluate(self, spec: CellSpec, trial: optuna.Trial):
        evaluate = self.evaluate
        if evaluate is None:
            from nas.train import evaluate

        def report(step: int, bpc: float) -> None:
            if self.multi_objective:
                return  # Optuna cannot prune multi-objective trials
            trial.report(bpc, step)
            if trial.should_prune():
                trial.set_user_attr("nas_state", "pruned")
                trial.set_user_attr("reason", f"pruned at step {step} (val bpc {bpc:.4f})")
                raise optuna.TrialPruned(f"pruned at step {step}")

        out = None if self.trials_dir is None else self.trials_dir / f"{trial.number:05d}"
        if out is not None:
            trial.set_user_attr("run_dir", str(out.resolve()))
        return evaluate(spec, self.trainer, self.seed, self.corpus, callback=report,
                        desc=f"trial {trial.number}", out_dir=out)

    @staticmethod
    def _record(trial: optuna.Trial, result) -> None:
        for key in ("params", "hidden_size", "steps", "tokens", "seconds", "chars_per_sec", "train_bpc",
                    "val_bpc", "diverged"):
            trial.set_user_attr(key, getattr(result, key))
        trial.set_user_attr("curve", [list(p) for p in result.curve])
        trial.set_user_attr("train_curve", [list(p) for p in result.train_curve])
        trial.set_user_attr("nas_state", "diverged" if result.diverged else "complete")
        if result.diverged:
            trial.set_user_attr("reason", result.diverged)

    def _earlier_result(self, study: optuna.Study, cell_hash: str, number: int):
        """A finished evaluation of the same cell at the same budget: complete, or diverged (which
        is deterministic for a given seed and budget). Pruned ones are not reused: pruning depends
        on the other trials of the moment."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.number == number or t.user_attrs.get("cell_hash") != cell_hash:
                continue
            if t.user_attrs.get("budget") != self.budget or "duplicate_of" in t.user_attrs:
                continue
            if t.state == TrialState.COMPLETE or t.user_attrs.get("nas_state") == "diverged":
                return t
        return None

    def _reuse(self, trial: optuna.Trial, earlier) -> float | tuple[float, float]:
        trial.set_user_attr("duplicate_of", earlier.number)
        for key in ("params", "hidden_size", "steps", "tokens", "seconds", "chars_per_sec", "train_bpc",
                    "val_bpc", "curve", "train_curve", "diverged", "run_dir"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        if earlier.state == TrialState.FAIL:
            trial.set_user_attr("nas_state", "diverged")
            raise TrialFailed("diverged", f"duplicate of trial {earlier.number}: "
                                          f"{earlier.user_attrs.get('reason', 'diverged')}")
        trial.set_user_attr("nas_state", "duplicate")
        values = earlier.values
        return tuple(values) if self.multi_objective else values[0]
