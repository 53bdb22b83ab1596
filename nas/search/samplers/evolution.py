"""Regularized ("aging") evolution (Real et al., 2019) as an Optuna sampler.

    population  = the P most recent informative trials (COMPLETE, PRUNED, FAIL-not-lost), by trial number
    until P exist: the reference cells `seed_params` (trial i gets seed_params[i]), then random cells
    then, per trial:
        tournament = S trials drawn uniformly, without replacement, from the population
        parent     = the best of the tournament
        child      = the parent with exactly one decision mutated: one of the parent's params, drawn
                     uniformly, is redrawn from its distribution conditioned on differing from the
                     parent's value; params the child needs that the parent lacks (branches the
                     mutation opened) are drawn at random

The oldest member dies simply by falling out of the window of the P most recent trials. Age is the
trial number (birth order), so the population is a function of the study alone, whichever worker
asks. Departure from the paper: the population holds failed trials too (as the worst), so that a run
of invalid cells ages out of the population like any other instead of being silently skipped.

Ranking (`_rank`), best first: by score (nas.search.samplers.base.score), ties to the COMPLETE trial.
A PRUNED trial's score is its last intermediate value: the val bpc it had when stopped, an upper
bound on what it would have reached, so a pruned cell beats a complete one only when it was already
strictly better early than the other at the end. FAIL trials score inf and rank last.

The parent and the mutated param are chosen in `before_trial` and stored as the trial's system attrs
`evolution:parent` (trial number) and `evolution:mutated` (param name); a seed cell carries
`evolution:seed` (its index). `sample_relative` returns {} and `sample_independent` builds the
child one param at a time, as the define-by-run space asks for it. Every draw of a trial comes from
`trial_rng(seed, trial.number)`, so each trial is reproducible whichever worker runs it.

Trials enqueued with fixed params (e.g. a lost trial retried) are not children: they get no parent,
and whatever the space asks beyond their fixed params is drawn at random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from nas.search import optuna_adapter
from nas.search.optuna_adapter import contains, uniform_draw
from nas.search.samplers.base import (
    DefineByRunSampler,
    fresh_seed,
    is_informative,
    require_single_objective_minimise,
    score,
    trial_rng,
)
from nas.trials import TrialRecord

PARENT_ATTR = "evolution:parent"
MUTATED_ATTR = "evolution:mutated"
SEED_ATTR = "evolution:seed"


@dataclass
class _Plan:
    """How one trial is built: values to copy (a seed cell's or the parent's), the one to mutate."""
    rng: np.random.Generator
    template: dict[str, Any] = field(default_factory=dict)
    mutated: str | None = None


class AgingEvolutionSampler(DefineByRunSampler):
    """Regularized evolution over a define-by-run search space.

    Args:
        population_size: P, the number of most recent informative trials that form the population.
        sample_size: S, the tournament size (1 <= S <= P).
        seed_params: reference cells' params, proposed first and in order (trial i gets the i-th);
            params a reference cell lacks, or whose value is outside the distribution, are random.
        seed: seed of every random draw; None draws one from OS entropy.
    """

    def __init__(self, *, population_size: int = 20, sample_size: int = 5,
                 seed_params: Sequence[Mapping[str, Any]] = (), seed: int | None = None) -> None:
        if population_size < 1:
            raise ValueError(f"AgingEvolutionSampler: population_size must be >= 1, got {population_size}")
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"AgingEvolutionSampler: sample_size must be in [1, population_size="
                             f"{population_size}], got {sample_size}")
        if seed is not None and seed < 0:
            raise ValueError(f"AgingEvolutionSampler: seed must be >= 0, got {seed}")
        self._population_size = population_size
        self._sample_size = sample_size
        self._seed_params = tuple(dict(p) for p in seed_params)
        self._seed = fresh_seed() if seed is None else seed
        self._plans: dict[int, _Plan] = {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        require_single_objective_minimise(study, "AgingEvolutionSampler")
        self._plans[optuna_adapter.trial_id(trial)] = self._plan(study, trial)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = self._plans.setdefault(optuna_adapter.trial_id(trial), _Plan(trial_rng(self._seed, trial.number)))
        value = plan.template.get(param_name)
        if param_name in plan.template and contains(param_distribution, value):
            if param_name == plan.mutated:
                return _mutate(param_distribution, value, plan.rng)
            return value
        return uniform_draw(param_distribution, plan.rng)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._plans.pop(optuna_adapter.trial_id(trial), None)

    def population(self, study: optuna.Study) -> list[FrozenTrial]:
        """The P most recent informative trials (fewer while the study is young), oldest first.

        A duplicate (a trial that reused an earlier trial's result for the same cell, `duplicate_of`)
        is not a member: a mutation of a dead parameter gives the parent's cell again, and counting
        such copies would fill the population with the best cell and make most children copies too
        (measured on the default search: 780 trials, 511 of them duplicates, for 100 cells trained;
        without them in the population: 144 trials, 7 duplicates)."""
        trials = [t for t, r in ((t, TrialRecord.of(t)) for t in study.get_trials(deepcopy=False))
                  if is_informative(t, r) and not r.is_duplicate]
        return sorted(trials, key=lambda t: t.number)[-self._population_size:]

    def _plan(self, study: optuna.Study, trial: FrozenTrial) -> _Plan:
        rng = trial_rng(self._seed, trial.number)
        if optuna_adapter.enqueued_params(trial):
            # an enqueued trial with decisions of its own (a lost trial's retry); the budget's
            # empty placeholders (nas.search.storage.top_up) are ordinary trials
            return _Plan(rng)
        if trial.number < len(self._seed_params):
            optuna_adapter.set_system_attr(study, trial, SEED_ATTR, trial.number)
            return _Plan(rng, dict(self._seed_params[trial.number]))
        population = self.population(study)
        if len(population) < self._population_size:
            return _Plan(rng)
        contenders = rng.choice(len(population), size=self._sample_size, replace=False)
        parent = min((population[i] for i in contenders), key=_rank)
        mutable = [name for name, d in parent.distributions.items() if not d.single()]
        if not mutable:
            return _Plan(rng)
        mutated = mutable[rng.integers(len(mutable))]
        optuna_adapter.set_system_attr(study, trial, PARENT_ATTR, parent.number)
        optuna_adapter.set_system_attr(study, trial, MUTATED_ATTR, mutated)
        return _Plan(rng, dict(parent.params), mutated)


def _rank(trial: FrozenTrial) -> tuple[float, int]:
    return score(trial), 0 if trial.state == TrialState.COMPLETE else 1


def _mutate(distribution: BaseDistribution, value: Any, rng: np.random.Generator) -> Any:
    """A draw from `distribution` conditioned on differing from `value`, by rejection.

    Terminates: only params with more than one value are mutated, and a draw equals the old value with
    probability at most 1/2 (log-int ranges aside, which still leave it well below 1).
    """
    old = distribution.to_internal_repr(value)
    while True:
        new = uniform_draw(distribution, rng)
        if distribution.to_internal_repr(new) != old:
            return new
