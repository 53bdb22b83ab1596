"""What every home-made sampler shares: how the objective's outcomes read as scores, and the
define-by-run sampler base.

A controller (`controller=` on the command line) is an Optuna sampler; nas.search.samplers.registry
builds one by name. How the objective (nas.search.objective) records outcomes (nas.trials.Outcome)
and how a sampler reads them:

    COMPLETE  value = val bpc, lower is better (also for a duplicate, `duplicate_of` set: a duplicate
              cell reuses an earlier result and counts as a normal result)
    PRUNED    stopped early; its last intermediate value is a real but early score
    FAIL      outcome invalid, diverged, screened, error or lost; none recorded = error.
              Lost means the worker died: not the cell's fault, the cell is retried as a new trial,
              so samplers ignore lost trials entirely.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas.trials import TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class DefineByRunSampler(optuna.samplers.BaseSampler):
    """Base of the samplers that decide each decision as the space asks for it (define-by-run):
    no relative (joint) sampling, so subclasses implement before_trial / sample_independent."""

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}


def is_informative(trial: FrozenTrial, record: TrialRecord | None = None) -> bool:
    """A finished trial that says something about its cell: COMPLETE, PRUNED, or FAIL but not lost
    (`record`: the trial's TrialRecord, where the caller has it)."""
    return trial.state in FINISHED and not (record or TrialRecord.of(trial)).is_lost


def score(trial: FrozenTrial) -> float:
    """The cell's score in the study's units, lower is better, of an informative trial.

    COMPLETE: its value. PRUNED: its last intermediate value (inf if it reported none). FAIL: inf.
    """
    if trial.state == TrialState.COMPLETE:
        return float(trial.value)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return math.inf


def require_single_objective_minimise(study: optuna.Study, who: str) -> None:
    if len(study.directions) > 1:
        raise ValueError(f"{who} is single-objective (it minimises val bpc) but study "
                         f"{study.study_name!r} has {len(study.directions)} objectives; "
                         "use the 'nsga2' controller for a multi-objective search")
    if study.direction != StudyDirection.MINIMIZE:
        raise ValueError(f"{who} minimises val bpc but study {study.study_name!r} maximises")


def fresh_seed() -> int:
    """A seed from OS entropy, for samplers built with seed=None."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])


def trial_rng(seed: int, trial_number: int) -> np.random.Generator:
    """The random stream of one trial: a function of (seed, trial number) only, so that a trial's draws do
    not depend on which worker runs it or on what the worker did before."""
    return np.random.default_rng([seed, trial_number])
