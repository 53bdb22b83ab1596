"""Controllers: every search strategy is an Optuna sampler, built by name with `make_sampler`.

    random     optuna RandomSampler
    tpe        optuna TPESampler, multivariate and grouped (the spaces are conditional), constant liar
    nsga2      optuna NSGAIISampler; the only multi-objective one: minimise (val bpc, parameter count)
    evolution  nas.search.evolution.AgingEvolutionSampler (Real et al., 2019)
    reinforce  nas.search.reinforce.ReinforceSampler (Zoph & Le, 2017)

The driver loop cannot tell them apart: it builds one with `make_sampler(name, seed, **options)` and
hands it to the study.

A user's controller needs no change here (docs/extending.md): `name` may also be the dotted path of
an Optuna sampler class or of a function that returns a sampler (`my_pkg.samplers.MySampler`, given
`seed` when it takes one, and the options by keyword), the name of a plugin's entry point in the
group `nas.controllers` (such a class or function), or a name given to `register_controller` in this
process (also a sampler object: the Python API's). A user's controller is single-objective (it
minimises val bpc) unless its class or function has `multi_objective = True`; then it minimises
(val bpc, parameter count), as nsga2. On the command line:
`nas-search controller=custom controller.name=my_pkg.MySampler` (conf/controller/custom.yaml).

This module also holds the trial conventions the two home-made controllers share, i.e. how the
objective (nas.search.objective) records outcomes and how a controller reads them:

    COMPLETE  value = val bpc, lower is better (also when user_attrs["duplicate_of"] is set: a
              duplicate cell reuses an earlier result and counts as a normal result)
    PRUNED    stopped early; its last intermediate value is a real but early score
    FAIL      user_attrs["nas_state"] in {"invalid", "diverged", "error", "lost"}; missing = "error".
              "lost" means the worker died: not the cell's fault, the cell is retried as a new
              trial, so controllers ignore lost trials entirely.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna._transform import _SearchSpaceTransform
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

CONTROLLERS = ("random", "tpe", "nsga2", "evolution", "reinforce")
ENTRY_POINTS = "nas.controllers"
KEY = "controller.name"  # the setting that names a controller, for the error messages
# Controllers given to register_controller in this process: name -> sampler class, function or object.
_REGISTERED: dict[str, Any] = {}

NAS_STATE = "nas_state"
LOST = "lost"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(name: str, seed: int | None = None, **options: Any) -> optuna.samplers.BaseSampler:
    """The controller called `name` (one of CONTROLLERS, or a user's: see the module docstring),
    seeded with `seed`.

    Options, by controller (defaults in brackets):
        random     none
        tpe        n_startup_trials [10], multivariate [True], group [True], constant_liar [True]
        nsga2      population_size [20]
        evolution  population_size [20], sample_size [5], seed_params [()]
        reinforce  hidden_size [64], lr [2e-3], baseline_decay [0.95], entropy_weight [1e-3],
                   fail_value [10.0]
        a user's   the keyword parameters of its class or function; a registered sampler object
                   takes none (and keeps its own seed)

    Raises ValueError for an unknown name, a path that does not import, an option the controller
    does not take, or a user's function that returns no Optuna sampler.
    """
    build = _builder(name)
    if isinstance(build, optuna.samplers.BaseSampler):
        if options:
            raise ValueError(f"make_sampler: controller {name!r} is a sampler object; it takes no options, "
                             f"got {', '.join(sorted(options))}")
        return build
    params = inspect.signature(build).parameters
    accepted = [p for p in params if p != "seed"]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"make_sampler: controller {name!r} takes no option(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(accepted) or 'none'}")
    sampler = build(seed=seed, **options) if "seed" in params or takes_any else build(**options)
    if not isinstance(sampler, optuna.samplers.BaseSampler):  # a setting's fault: the CLIs' ValueError
        raise ValueError(  # noqa: TRY004
            f"{KEY}: {name!r} made a {type(sampler).__name__}, expected an optuna.samplers.BaseSampler")
    return sampler


def register_controller(name: str, controller: Any) -> None:
    """Make `controller` (an Optuna sampler class, a function returning a sampler, or a sampler
    object) known as `name` in this process (worker processes do not see it: give them a dotted
    path or an entry point)."""
    if not isinstance(name, str) or not name or name in CONTROLLERS:
        raise ValueError(f"register_controller: expected a new name (not {', '.join(CONTROLLERS)}), got {name!r}")
    if not (isinstance(controller, optuna.samplers.BaseSampler) or callable(controller)):
        raise TypeError(f"register_controller({name!r}): expected a sampler class, function or object, "
                        f"got {type(controller).__name__}")
    _REGISTERED[name] = controller


def is_multi_objective(name: str) -> bool:
    """True when the controller searches (val bpc, parameter count) rather than val bpc alone."""
    build = _builder(name)
    return name == "nsga2" or getattr(build, "multi_objective", False) is True


def _builder(name: str) -> Any:
    # evolution and reinforce are imported here, not at the top: they import this module's
    # conventions, and `random`/`tpe` users need not import torch.
    if name == "random":
        return optuna.samplers.RandomSampler
    if name == "tpe":
        return _tpe
    if name == "nsga2":
        return _nsga2
    if name == "evolution":
        from nas.search.evolution import AgingEvolutionSampler
        return AgingEvolutionSampler
    if name == "reinforce":
        from nas.search.reinforce import ReinforceSampler
        return ReinforceSampler
    return _user_builder(name)


def _user_builder(name: str) -> Any:
    from nas.plugins import entry_points, import_object, load_entry_point

    if not isinstance(name, str) or not name:
        raise ValueError(f"{KEY}: expected a controller name or a dotted path, got {name!r}")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name == "custom":  # conf/controller/custom.yaml's placeholder
        raise ValueError(f"{KEY}: controller=custom needs your controller: controller.name=my_pkg.MySampler "
                         "(the dotted path of a sampler class or function, or a plugin's name)")
    plugins = {ep.name: ep for ep in entry_points(ENTRY_POINTS)}
    if name in plugins:
        found = load_entry_point(plugins[name], ENTRY_POINTS)
    elif "." in name or ":" in name:
        found = import_object(name, KEY)
    else:
        known = ", ".join([*CONTROLLERS, *_REGISTERED, *(p for p in plugins if p not in CONTROLLERS)])
        raise ValueError(f"{KEY}: unknown controller {name!r}; expected one of {known}, or the dotted path "
                         "of an Optuna sampler class or of a function that returns one")
    if not (isinstance(found, optuna.samplers.BaseSampler) or callable(found)) or inspect.ismodule(found):
        raise ValueError(f"{KEY}: {name!r} is a {type(found).__name__}, expected an Optuna sampler class, "
                         "a function that returns a sampler, or a sampler object")
    return found


def _tpe(*, seed: int | None = None, n_startup_trials: int = 10, multivariate: bool = True,
         group: bool = True, constant_liar: bool = True) -> optuna.samplers.TPESampler:
    # group=True is deliberate (define-by-run spaces: each branch gets its own multivariate model), so
    # Optuna's "experimental argument" warning is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                          multivariate=multivariate, group=group,
                                          constant_liar=constant_liar)


def _nsga2(*, seed: int | None = None, population_size: int = 20) -> optuna.samplers.NSGAIISampler:
    # 20, not Optuna's 50: the same population as aging evolution, and more generations within the
    # few hundred trials a cell search affords.
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)


# ---- conventions shared by the home-made controllers ------------------------------------------------

class DefineByRunSampler(optuna.samplers.BaseSampler):
    """Base of the samplers that decide each decision as the space asks for it (define-by-run):
    no relative (joint) sampling, so subclasses implement before_trial / sample_independent."""

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}


def is_lost(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get(NAS_STATE) == LOST


def is_informative(trial: FrozenTrial) -> bool:
    """A finished trial that says something about its cell: COMPLETE, PRUNED, or FAIL but not lost."""
    return trial.state in FINISHED and not is_lost(trial)


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
    if study._is_multi_objective():
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


def random_value(distribution: BaseDistribution, rng: np.random.Generator) -> Any:
    """A draw from `distribution` as RandomSampler makes it (uniform; log-uniform where log=True)."""
    transform = _SearchSpaceTransform({"x": distribution})
    return transform.untransform(rng.uniform(transform.bounds[:, 0], transform.bounds[:, 1]))["x"]


def contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
