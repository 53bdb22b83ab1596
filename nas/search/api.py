"""Run a search from Python: the search space and the controller may be the user's own objects.

    from nas.search.api import run_search

    outcome = run_search(space=my_space, sampler=optuna.samplers.TPESampler(seed=0), n_trials=20,
                         trainer={"steps": 200, "hidden_size": 64})
    print(outcome.best[0].label, outcome.best[0].val_bpc)

`run_search` starts from the main job's config (conf/search.yaml, exactly what `nas-search` with no
arguments runs; a built-in space or controller brings its conf/ group's options), applies the
arguments (a section given as a dict updates the main job's section, one given as a dataclass of
nas.config replaces it) and runs the same pipeline (nas.search.run.search). See docs/extending.md.
"""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass
from types import ModuleType
from typing import Any

from nas import config as schema
from nas.config_checks import check_baselines, check_search_app

__all__ = ["check_search", "run_search", "search_config"]

# The SearchApp fields that run_search takes as settings (the others have parameters of their own).
_SECTIONS = {f.name: f for f in fields(schema.SearchApp)}


def run_search(space: Any = "graph", sampler: Any = "evolution", *, n_trials: int | None = None,
               space_options: dict[str, Any] | None = None, sampler_options: dict[str, Any] | None = None,
               progress: bool | None = None, **settings: Any):
    """Run (or resume) a search and return its nas.search.summary.SearchOutcome.

    space:    a built-in space name, a plugin's name, a dotted path (`my_pkg.my_space`), or a module
              with `sample(trial, **options) -> CellSpec` or such a function.
    sampler:  a controller name, a plugin's name, a dotted path, an Optuna sampler class or function
              returning one (called with `seed` and `sampler_options`), or an Optuna sampler object.
    settings: any other SearchApp field (study, workers, seed, out_dir, baselines, trainer, data,
              pruner, storage, tracking, report, export, ...), a section as its dataclass or a dict.

    Objects that worker processes cannot import by a dotted path (a sampler object, a lambda, a
    function defined in __main__ or inside another function) run in this process (workers=1 unless
    `workers` is given; a larger one is a ValueError). Bad settings are one-line ValueErrors, raised before any work starts.
    """
    from nas.search.run import search

    return search(search_config(space, sampler, n_trials=n_trials, space_options=space_options,
                                sampler_options=sampler_options, **settings), progress=progress)


def search_config(space: Any = "graph", sampler: Any = "evolution", *, n_trials: int | None = None,
                  space_options: dict[str, Any] | None = None, sampler_options: dict[str, Any] | None = None,
                  **settings: Any) -> schema.SearchApp:
    """The checked, resolved config (a SearchApp, as nas-search passes it to the pipeline) of
    run_search's arguments. Registers in-process objects (register_space, register_controller)."""
    from omegaconf import OmegaConf

    unknown = sorted(set(settings) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"run_search: unknown setting(s) {', '.join(unknown)}; "
                         f"expected fields of nas.config.SearchApp: {', '.join(_SECTIONS)}")
    space_name, space_local = _space_name(space)
    sampler_name, sampler_local = _sampler_name(sampler)
    for name, value in settings.items():
        _section(name, value)  # checks a section's fields: a one-line error names an unknown one
    base = _main_job(space_name, sampler_name)
    update: dict[str, Any] = {name: OmegaConf.structured(value) if is_dataclass(value) else value
                              for name, value in settings.items()}
    if n_trials is not None:
        update["n_trials"] = n_trials
    update["search_space"] = {"name": space_name, "options": dict(space_options or {})}
    update["controller"] = {"name": sampler_name, "options": dict(sampler_options or {})}
    for name, value in update.items():
        if is_dataclass(settings.get(name)):
            base[name] = value  # a whole section given: it replaces the main job's
        else:
            base.merge_with({name: value})
    local = [what for what, flag in (("space", space_local), ("sampler", sampler_local)) if flag]
    if local and "workers" not in settings:
        base.workers = 1  # the main job's 2 worker processes could not import an in-process object
    app = schema.search_app(OmegaConf.to_container(base, resolve=True))
    if local and (app.workers != 1 or app.workers_per_device):
        raise ValueError(f"run_search: workers={app.workers}: the {' and the '.join(local)} "
                         "cannot be imported by worker processes (an object, a lambda, or a function "
                         "defined in __main__ or in a function); use workers=1, or give a dotted path "
                         "to a module-level definition")
    check_search(app)
    from nas.search.run import with_seed_params

    return with_seed_params(app)


def _main_job(space: str, sampler: str):
    """conf/search.yaml composed as nas-search composes it, with the conf/ group of a built-in space
    and controller (their options), else the `custom` groups (no options)."""
    from hydra import compose, initialize_config_module
    from hydra.core.config_store import ConfigStore

    from nas.search.samplers import CONTROLLERS
    from nas.search_spaces import SPACES

    ConfigStore.instance().store(name="search_schema", node=schema.SearchApp)
    groups = [f"search_space={space if space in SPACES else 'custom'}",
              f"controller={sampler if sampler in CONTROLLERS else 'custom'}"]
    with initialize_config_module("nas.conf", version_base="1.3"):
        return compose("search", overrides=groups)


def _space_name(space: Any) -> tuple[str, bool]:
    """(the config's search_space.name, whether it exists in this process only)."""
    from nas.search_spaces import register_space

    if isinstance(space, str):
        return space, False
    path = _importable_path(space)
    if path is not None:
        return path, False
    name = getattr(space, "__name__", type(space).__name__).rsplit(".", 1)[-1].strip("<>") or "space"
    register_space(name, space)
    return name, True


def _sampler_name(sampler: Any) -> tuple[str, bool]:
    """(the config's controller.name, whether it exists in this process only)."""
    import optuna

    from nas.search.samplers import register_controller

    if isinstance(sampler, str):
        return sampler, False
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        path = _importable_path(sampler)
        if path is not None:
            return path, False
    name = getattr(sampler, "__name__", type(sampler).__name__).strip("<>") or "sampler"
    register_controller(name, sampler)
    return name, True


def _importable_path(obj: Any) -> str | None:
    """`module.qualname` when that dotted path imports `obj` in another process, else None."""
    if isinstance(obj, ModuleType):
        return obj.__name__ if obj.__name__ != "__main__" else None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    from nas.plugins import import_object

    try:
        found = import_object(f"{module}.{qualname}", "run_search")
    except ValueError:
        return None
    return f"{module}.{qualname}" if found is obj else None


def _section(name: str, value: Any) -> Any:
    """A SearchApp field's value: a section's dataclass from itself or a dict of its fields."""
    kind = _SECTIONS[name].default_factory
    if kind is not None and inspect.isclass(kind) and is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"{name}: unknown field(s) {', '.join(unknown)}; expected: {', '.join(sorted(known))}")
            return kind(**value)
        raise ValueError(f"{name}: expected a {kind.__name__} or a dict of its fields, got {type(value).__name__}")
    return value


def check_search(app: schema.SearchApp) -> None:
    """Every setting of a search, before any work or file: the search-level ones, the trainer's and
    the corpus's and the storage's (torch-free, so a typo is answered at once), then the baselines,
    the search space and its options, the seed cells, the controller and its options. One-line
    ValueErrors (nas-search's checks and run_search's)."""
    check_search_app(app)
    app.trainer.check()
    app.data.check()
    from nas.search.storage import check_storage

    check_storage(app.storage)

    from nas.cell import KNOWN_CELLS
    from nas.search.run import seed_params
    from nas.search.samplers import make_sampler
    from nas.search.worker import sampler_options
    from nas.search_spaces import open_space

    check_baselines(app.baselines, KNOWN_CELLS)
    space = open_space(app.search_space)
    options = sampler_options(app, space)  # as the search will build it
    if app.seed_cells:
        options["seed_params"] = seed_params(app, space)  # every file read, every cell expressible
    make_sampler(app.controller.name, seed=app.seed, **options)
