"""Search spaces: each a pure function `trial -> CellSpec` (STYLE.md lesson 7).

A space module exposes
    sample(trial, **options) -> CellSpec   only `trial.suggest_categorical` / `suggest_int`, with
                                           parameter names that encode position, so that every name
                                           has one choice set; an invalid cell raises CellError;
    known_params(**options) -> {reference cell name: params}, the params with which
                                           `sample(optuna.trial.FixedTrial(params), **options)`
                                           builds that cell of nas.cell.known;
and documents its options in its docstring. Bad options raise ValueError (never CellError, which a
study catches as a failed trial). Adding a space is one module, one line in SPACES and one
conf/search_space entry.

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
from nas.search_spaces import graph, highway, tree

__all__ = ["SPACES", "SearchSpace", "get_space"]

SPACES: dict[str, ModuleType] = {"graph": graph, "highway": highway, "tree": tree}


@dataclass(frozen=True)
class SearchSpace:
    """A space with its options bound.

    name:        the registry name.
    sample:      trial -> CellSpec, the module's `sample` with the options bound.
    known:       reference cell name -> the params that make `sample(FixedTrial(params))` that cell
                 (only the cells these options can express).
    description: the first line of the module docstring.
    """

    name: str
    sample: Callable[[BaseTrial], CellSpec]
    known: dict[str, dict[str, Any]]
    description: str

    def replay(self, params: Mapping[str, Any]) -> CellSpec:
        """The cell that `params` (e.g. a trial's `params`, or `known[name]`) select."""
        return self.sample(FixedTrial(dict(params)))


def get_space(name: str, **options: Any) -> SearchSpace:
    """The space called `name` with `options` bound (ValueError for an unknown name or option, or a
    bad option value)."""
    module = SPACES.get(name)
    if module is None:
        raise ValueError(f"unknown search space {name!r} (known: {', '.join(SPACES)})")
    accepted = [p.name for p in inspect.signature(module.sample).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"search space {name!r}: unknown option(s) {unknown} "
                         f"(options: {', '.join(accepted) or 'none'})")
    known = module.known_params(**options)  # also validates the option values
    description = (module.__doc__ or name).strip().splitlines()[0]
    return SearchSpace(name, functools.partial(module.sample, **options), known, description)
