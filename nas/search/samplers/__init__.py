"""The search strategies, each an Optuna sampler (a "controller" in the config is a sampler).

    base       what the home-made samplers share (scores of outcomes, define-by-run base)
    registry   name -> sampler: built-ins, a user's dotted path, plugins (group nas.controllers)
    evolution  aging evolution (Real et al., 2019)
    reinforce  REINFORCE with an LSTM policy (Zoph & Le, 2017); imports torch
"""

from nas.search.samplers.registry import (
    CONTROLLERS,
    is_multi_objective,
    make_sampler,
    register_controller,
)

__all__ = ["CONTROLLERS", "is_multi_objective", "make_sampler", "register_controller"]
