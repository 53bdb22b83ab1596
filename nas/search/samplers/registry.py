"""The samplers by name: every controller (`controller=` on the command line) is an Optuna sampler,
built by `make_sampler(name, seed, **options)`, so the driver loop cannot tell them apart.

    random     optuna RandomSampler
    tpe        optuna TPESampler, multivariate and grouped (the spaces are conditional), constant liar
    nsga2      optuna NSGAIISampler; the only multi-objective one: minimise (val bpc, parameter count)
    evolution  nas.search.samplers.evolution.AgingEvolutionSampler (Real et al., 2019)
    reinforce  nas.search.samplers.reinforce.ReinforceSampler (Zoph & Le, 2017)

A user's sampler needs no change here (docs/extending.md): `name` may also be the dotted path of an
Optuna sampler class or of a function that returns a sampler (`my_pkg.samplers.MySampler`, given
`seed` when it takes one, and the options by keyword), the name of a plugin's entry point in the
group `nas.controllers` (such a class or function), or a name given to `register_controller` in this
process (also a sampler object: the Python API's). A user's sampler is single-objective (it
minimises val bpc) unless its class or function has `multi_objective = True`; then it minimises
(val bpc, parameter count), as nsga2. On the command line:
`nas-search controller=custom controller.name=my_pkg.MySampler` (conf/controller/custom.yaml).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import optuna

CONTROLLERS = ("random", "tpe", "nsga2", "evolution", "reinforce")
ENTRY_POINTS = "nas.controllers"
KEY = "controller.name"  # the setting that names a controller, for the error messages
# Samplers given to register_controller in this process: name -> sampler class, function or object.
_REGISTERED: dict[str, Any] = {}


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
    # evolution and reinforce are imported here, not at the top: `random`/`tpe` users need not
    # import torch (reinforce's policy is a torch LSTM).
    if name == "random":
        return optuna.samplers.RandomSampler
    if name == "tpe":
        return _tpe
    if name == "nsga2":
        return _nsga2
    if name == "evolution":
        from nas.search.samplers.evolution import AgingEvolutionSampler
        return AgingEvolutionSampler
    if name == "reinforce":
        from nas.search.samplers.reinforce import ReinforceSampler
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
