"""Search spaces: each a pure function `trial -> CellSpec`.

A space module exposes
    sample(trial, **options) -> CellSpec   only `trial.suggest_categorical` / `suggest_int`, with
                                           parameter names that encode position, so that every name
                                           has one choice set; an invalid cell raises CellError;
    known_params(**options) -> {reference cell name: params}, the params with which
                                           `sample(optuna.trial.FixedTrial(params), **options)`
                                           builds that cell of nas.cell.known;
    encode(spec, **options) -> params or None   (optional) the params that rebuild any cell it can
                                           express: what lets a search start from the user's cells
                                           (`seed_cells`);
and documents its options in its docstring. Bad options raise ValueError (never CellError, which a
study catches as a failed trial). Adding a built-in space is one module, one line in SPACES and one
conf/search_space entry.

A user's space needs no change here (docs/extending.md): `get_space` also takes the dotted path of
the user's module (`my_pkg.my_space`, with `sample` and optionally `known_params`) or function
(`my_pkg.my_space.sample`), the name of a plugin's entry point in the group `nas.search_spaces`
(a module or a function), a name given to `register_space` in this process, or the module or
function itself. On the command line: `nas-search search_space=custom search_space.name=my_pkg.my_space`
(conf/search_space/custom.yaml: no options of a built-in space).

    space = get_space("graph", max_nodes=12)
    study.enqueue_trial(space.known["lstm"])
    study.optimize(lambda t: evaluate(space.sample(t), ...), catch=(CellError,))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from optuna.trial import BaseTrial, FixedTrial

from nas.cell import CellSpec
from nas.plugins import entry_points, import_object, load_entry_point
from nas.search_spaces import graph, highway, tree

__all__ = ["ENTRY_POINTS", "SPACES", "SearchSpace", "get_space", "open_space", "register_space"]

SPACES: dict[str, ModuleType] = {"graph": graph, "highway": highway, "tree": tree}
ENTRY_POINTS = "nas.search_spaces"
KEY = "search_space.name"  # the setting that names a space, for the error messages
CUSTOM = "custom"  # conf/search_space/custom.yaml's placeholder name

# Spaces given to register_space in this process (the Python API's callables): name -> module or
# function.
_REGISTERED: dict[str, Any] = {}


@dataclass(frozen=True)
class SearchSpace:
    """A space with its options bound.

    name:        the name it was asked by (a built-in name, a dotted path, a plugin's name).
    sample:      trial -> CellSpec, the module's `sample` with the options bound.
    known:       reference cell name -> the params that make `sample(FixedTrial(params))` that cell
                 (only the cells these options can express; empty for a space without
                 `known_params`).
    description: the first line of the module docstring.
    encode:      CellSpec -> the params that make `sample` build it (None when it cannot), bound from
                 the module's `encode(spec, **options)`; None for a space without one.
    """

    name: str
    sample: Callable[[BaseTrial], CellSpec]
    known: dict[str, dict[str, Any]]
    description: str
    encode: Callable[[CellSpec], dict[str, Any] | None] | None = None

    def seed_params(self, cells: Mapping[str, CellSpec]) -> list[dict[str, Any]]:
        """The params of the reference cells, then of `cells` (label -> spec): what the evolution
        controller starts from. A cell the space cannot express is a one-line ValueError."""
        out = list(self.known.values())
        for label, spec in cells.items():
            params = self.encode(spec) if self.encode is not None else None
            if params is None:
                why = "cannot express it" if self.encode is not None else "has no encode(spec) to express it"
                raise ValueError(f"seed_cells: {label}: the {self.name} space {why} with these options")
            out.append(params)
        return out

    def replay(self, params: Mapping[str, Any]) -> CellSpec:
        """The cell that `params` (e.g. a trial's `params`, or `known[name]`) select."""
        return self.sample(FixedTrial(dict(params)))


def register_space(name: str, space: ModuleType | Callable[..., CellSpec]) -> None:
    """Make `space` (a module with `sample`, or a function trial -> CellSpec) known as `name` in this
    process (worker processes do not see it: give them a dotted path or an entry point)."""
    if not isinstance(name, str) or not name or name in SPACES:
        raise ValueError(f"register_space: expected a new name (not {', '.join(SPACES)}), got {name!r}")
    _sampler_of(space, name)
    _REGISTERED[name] = space


def open_space(section: Any) -> SearchSpace:
    """The space a search_space config section names (nas.config.SpaceConfig, or the plain dict of a
    stored config: `module` when set, else `name`, with its `options`); an error names the setting
    the user gave."""
    fields = section if isinstance(section, Mapping) else vars(section)
    module = fields.get("module")
    try:
        return get_space(module or fields["name"], **fields["options"])
    except ValueError as e:
        if module and str(e).startswith(f"{KEY}:"):
            raise ValueError("search_space.module:" + str(e)[len(KEY) + 1:]) from None
        raise


def get_space(name: str | ModuleType | Callable[..., CellSpec], **options: Any) -> SearchSpace:
    """The space `name` with `options` bound: a built-in name (SPACES), a registered name, an entry
    point's name, a dotted path, or a module or function (see the module docstring). ValueError for
    an unknown name, a path that does not import, an unknown option or a bad option value."""
    label, space = _resolve(name)
    sample = _sampler_of(space, label)
    accepted = [p.name for p in inspect.signature(sample).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"search space {label!r}: unknown option(s) {unknown} "
                         f"(options: {', '.join(accepted) or 'none'})")
    known_params = getattr(space, "known_params", None) if isinstance(space, ModuleType) else None
    known = known_params(**options) if known_params else {}  # also validates the option values
    description = (space.__doc__ or label).strip().splitlines()[0]
    bound = functools.partial(sample, **options)
    if space not in SPACES.values():
        bound = _checked(bound, label)
    encode = getattr(space, "encode", None) if isinstance(space, ModuleType) else None
    return SearchSpace(label, bound, known, description,
                       functools.partial(encode, **options) if callable(encode) else None)


def _resolve(name: Any) -> tuple[str, Any]:
    """(label, module or function) of what get_space was given."""
    if isinstance(name, ModuleType) or (callable(name) and not isinstance(name, str)):
        return getattr(name, "__name__", type(name).__name__).rsplit(".", 1)[-1], name
    if not isinstance(name, str) or not name:
        raise ValueError(f"{KEY}: expected a space name, a dotted path or a function, got {name!r}")
    if name in SPACES:
        return name, SPACES[name]
    if name == CUSTOM:
        raise ValueError(f"{KEY}: search_space=custom needs your space: search_space.module=my_pkg.my_space "
                         "(the dotted path of your module or function, or a plugin's name)")
    if name in _REGISTERED:
        return name, _REGISTERED[name]
    plugins = {ep.name: ep for ep in entry_points(ENTRY_POINTS)}
    if name in plugins:
        return name, load_entry_point(plugins[name], ENTRY_POINTS)
    if "." in name or ":" in name:
        return name, import_object(name, KEY)
    known = ", ".join([*SPACES, *_REGISTERED, *(p for p in plugins if p not in SPACES)])
    raise ValueError(f"{KEY}: unknown search space {name!r} (known: {known}; or the dotted path of "
                     "your module, e.g. my_pkg.my_space)")


def _sampler_of(space: Any, label: str) -> Callable[..., CellSpec]:
    sample = getattr(space, "sample", None) if isinstance(space, ModuleType) else space
    if not callable(sample):  # a setting's value: ValueError, which the CLIs answer in one line
        raise ValueError(  # noqa: TRY004
            f"{KEY}: {label!r} is not a search space: expected a module with a function "
            f"sample(trial, **options) -> CellSpec, or such a function, got {type(space).__name__}")
    return sample


def _checked(sample: Callable[[BaseTrial], Any], label: str) -> Callable[[BaseTrial], CellSpec]:
    """A user's sample function, held to return a CellSpec (anything else: a TypeError naming the
    space, not an error deep in the objective)."""
    @functools.wraps(sample)
    def checked(trial: BaseTrial) -> CellSpec:
        spec = sample(trial)
        if not isinstance(spec, CellSpec):
            raise TypeError(f"search space {label!r}: sample returned {type(spec).__name__}, expected a CellSpec")
        return spec

    return checked
