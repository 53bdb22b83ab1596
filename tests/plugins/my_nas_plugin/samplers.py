"""A user's controller: an Optuna sampler that takes the choices in turn (trial n: choice n mod k)."""

import optuna
from optuna.distributions import CategoricalDistribution


class CyclingSampler(optuna.samplers.RandomSampler):
    """Categorical choices in turn, from choice `start`; anything else as RandomSampler."""

    def __init__(self, seed=None, start: int = 0) -> None:
        super().__init__(seed=seed)
        self.start = start

    def sample_independent(self, study, trial, param_name, param_distribution):
        if isinstance(param_distribution, CategoricalDistribution):
            choices = param_distribution.choices
            return choices[(trial.number + self.start) % len(choices)]
        return super().sample_independent(study, trial, param_name, param_distribution)


def make_sampler(seed=None, start: int = 1) -> CyclingSampler:
    return CyclingSampler(seed=seed, start=start)


def not_a_sampler(seed=None):
    return 42
