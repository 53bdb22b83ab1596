"""The parts every cell module shares: `Node`, `CellError`, the limits and the helpers that keep an
error message one readable line.

This is the bottom of nas.cell: it imports nothing of the package. The validator (validate.py), the
canonical form and hash (hashing.py), the networkx and NAS-Bench-NLP formats (graph.py,
nasbench_nlp.py) work on these parts (a cell's state names, nodes and outputs), and `CellSpec`
(spec.py) composes them; so none of them needs to import the spec, and the package has no cycles.
The limits are explained in spec.py's docstring.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

INPUT = "x"
MAX_STATE = 8
MAX_NODES = 1000
MAX_OPERANDS = 64
MAX_FILE_BYTES = 1 << 20
MAX_JSON_DEPTH = 16
FLOAT32_MAX = 3.4028234663852886e38
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class CellError(ValueError):
    """A cell spec breaks a rule; the message names the node (or field) and the rule."""


@dataclass(frozen=True)
class Node:
    """One op applied to named operands. `options` is a sorted tuple of (key, value) pairs."""

    name: str
    op: str
    inputs: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str) -> Any:
        return dict(self.options)[key]


class Cell(Protocol):
    """What the format and hash modules read of a cell (a `CellSpec` is one)."""

    @property
    def state(self) -> tuple[str, ...]: ...

    @property
    def nodes(self) -> tuple[Node, ...]: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...

    def canonical(self) -> Cell: ...


@dataclass(frozen=True)
class Parts:
    """A cell read from an exchange format, before `CellSpec` validates it."""

    state: tuple[str, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    name: str = ""


def show(value: Any) -> str:
    """repr of a value from the input, shortened: a message stays one readable line whatever came
    (reprlib also stops at a few nesting levels, where repr() would recurse without limit)."""
    return _SHOW.repr(value)


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80


def str_list(value: Any, what: str) -> list[str]:
    """`value` as a list of names; CellError naming `what` for anything else (a string included)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CellError(f"{what}: expected a list of names, got {show(value)}")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise CellError(f"{what}: expected names (strings), got {show(bad[0])}")
    return out


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def check_depth(text: str) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH before parsing it (json.loads recurses once
    per level and raised RecursionError at 100,000 levels). Linear in the text's length."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for ch in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        depth += 1 if ch in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise CellError(f"cell: JSON nested deeper than {MAX_JSON_DEPTH} levels (a cell needs 3)")
