"""The op registry: the one place that says what a cell node can compute.

Everything else reads this table: the validator (arity, options), the canonical hash (commutativity,
weights), the compiler and the exporter (torch expression, derivative), the drawing (symbol) and the
search spaces (which ops exist). Adding an elementwise op is one `_register(Op(...))` line.

A user's op comes from the user's own code (docs/extending.md): `register_op(name, fn, arity, ...)`
with a torch function, called by a module of theirs or by a plugin's entry point in the group
`nas.ops` (loaded on the first lookup of an op name that is not registered). Such an op has no
templates: the compiler's step code calls `fn`, and cells that use it run the reference torch path
(nas.compile.fast_path), whose gradients autograd computes.

`expr` and `grad` are `str.format` templates of torch expressions over the operands `{a}`, `{b}`,
`{c}` (in operand order; `{sum}` and `{inv_n}` for n-ary ops), the result `{y}`, the incoming
gradient `{g}` and the op's options; the compiler and the exporter substitute their own variable
names, so the generated code is straight-line torch calls. `grad` gives one template per operand
(one template shared by all operands for n-ary ops): the gradient of the loss w.r.t. that operand.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nas.plugins import entry_points, load_entry_point

log = logging.getLogger("nas")

# Operand placeholders in `expr` / `grad` templates, in operand order.
OPERANDS = ("a", "b", "c")


def render(template: str, operands: list[str], options: Mapping[str, object], **names: str) -> str:
    """Fill an `expr`/`grad` template with variable names and option values."""
    fields: dict[str, object] = dict(zip(OPERANDS, operands))
    fields.update(sum=" + ".join(operands), inv_n=repr(1.0 / len(operands)), **options, **names)
    return template.format(**fields)


@dataclass(frozen=True)
class Op:
    """One node type.

    name:        the name used in cell JSON and in the hash.
    arity:       (min, max) number of operands; max None = unbounded.
    commutative: operand order does not change the value (the hash sorts such operands).
    expr:        torch expression template of the forward value (None for `linear`, which the
                 compiler lowers to matrix products).
    grad:        per-operand gradient templates (see module docstring).
    has_weights: the node owns parameters (only `linear`): two such nodes with equal operands are
                 still different functions, which the hash and the compiler must respect.
    options:     allowed options and their defaults; the spec fills in defaults so that the hash
                 sees one spelling of each cell.
    symbol:      short label for pictures.
    fn:          a user op's torch function (register_op); None for the built-in ops.
    equation:    a user op's formula as text, for documentation (e.g. "y = a * sigmoid(a)").
    """

    name: str
    arity: tuple[int, int | None]
    commutative: bool
    expr: str | None = None
    grad: tuple[str, ...] = ()
    has_weights: bool = False
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    symbol: str = ""
    fn: Callable[..., Any] | None = None
    equation: str = ""

    def accepts(self, n: int) -> bool:
        lo, hi = self.arity
        return n >= lo and (hi is None or n <= hi)


class _Registry(dict):
    """name -> Op. A name that is not registered loads the plugins' ops (entry points of the group
    `nas.ops`, the modules of $NAS_OP_MODULES) and is looked up again; `get` and `in` do the same,
    so the spec validator finds a plugin's op without anyone importing the plugin first."""

    def __missing__(self, name: str) -> Op:
        if load_plugins() and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


OPS: dict[str, Op] = _Registry()


def _register(op: Op) -> None:
    OPS[op.name] = op


def _opts(**kw: object) -> Mapping[str, object]:
    return MappingProxyType(dict(kw))


# linear: sum_i W_i @ in_i + b. The only op with weights. `bias_init` is the constant the bias is
# initialised to (the LSTM forget gate uses 1.0, after Jozefowicz et al. 2015).
_register(Op("linear", (1, None), True, has_weights=True,
             options=_opts(bias=True, bias_init=0.0), symbol="W"))
_register(Op("add", (2, 2), True, "{a} + {b}", ("{g}", "{g}"), symbol="+"))
_register(Op("sub", (2, 2), False, "{a} - {b}", ("{g}", "-{g}"), symbol="-"))
_register(Op("mul", (2, 2), True, "{a} * {b}", ("{g} * {b}", "{g} * {a}"), symbol="×"))
# blend(z, a, b) = z * a + (1 - z) * b: a gated mix (z is usually a sigmoid gate), written as
# b + z * (a - b) to save one elementwise op.
_register(Op("blend", (3, 3), False, "{c} + {a} * ({b} - {c})",
             ("{g} * ({b} - {c})", "{g} * {a}", "{g} - {g} * {a}"), symbol="blend"))
# mean of n operands (the ENAS / DARTS cells average their nodes).
_register(Op("mean", (1, None), True, "({sum}) * {inv_n}", ("{g} * {inv_n}",), symbol="mean"))
_register(Op("tanh", (1, 1), False, "torch.tanh({a})", ("{g} * (1 - {y} * {y})",),
             symbol="tanh"))
_register(Op("sigmoid", (1, 1), False, "torch.sigmoid({a})", ("{g} * {y} * (1 - {y})",),
             symbol="σ"))
_register(Op("relu", (1, 1), False, "torch.relu({a})", ("{g} * ({y} > 0).to({g}.dtype)",),
             symbol="relu"))
_register(Op("leaky_relu", (1, 1), False,
             "torch.nn.functional.leaky_relu({a}, {negative_slope!r})",
             ("torch.where({a} > 0, {g}, {g} * {negative_slope!r})",),
             options=_opts(negative_slope=0.01), symbol="lrelu"))
_register(Op("identity", (1, 1), False, "{a}", ("{g}",), symbol="id"))


# The ops whose templates are plain arithmetic on their operands: the same text is C, Triton and
# torch, so the fused kernels' tables (nas.compile.backends.c.ops, nas.compile.backends.triton_ops) take them from here.
ARITHMETIC = ("identity", "add", "sub", "mul", "blend", "mean")


def arithmetic_templates() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {name: (OPS[name].expr, OPS[name].grad) for name in ARITHMETIC}


def get_op(name: str) -> Op:
    """The registered op called `name`; KeyError-free lookup is the spec validator's job."""
    return OPS[name]


# ---- user ops and plugins ----------------------------------------------------------------------------
# The plugin helpers live here because the op registry is the lowest layer that loads plugins; the
# search spaces (nas.search_spaces) and the samplers (nas.search.samplers) use them too.

ENTRY_POINTS = "nas.ops"
# The modules that registered user ops in this process, for its child processes (a spawned pool of
# final retrainings imports nothing of its parent): a child imports them when a cell names an op it
# does not know.
MODULES_ENV = "NAS_OP_MODULES"
_USER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TEMPLATE_FIELDS = (*OPERANDS, "sum", "inv_n", "y", "g")
_plugins = {"entry_points_loaded": False, "loading": False}


def register_op(name: str, fn: Callable[..., Any], arity: int = 1, *, commutative: bool = False,
                has_weights: bool = False, equation: str = "", symbol: str = "",
                options: Mapping[str, object] | None = None) -> Op:
    """Register `fn` as the op `name`, usable in cell JSON, search spaces, the hash and the compiler.

    fn:          a torch function of `arity` tensors of shape (B, H), in operand order, and the op's
                 options by keyword, returning a (B, H) tensor; autograd differentiates it. A
                 function of its operands alone: no state, no parameters.
    arity:       the number of operands, 1, 2 or 3.
    commutative: operand order does not change the value (the hash then sorts the operands).
    has_weights: must be False: only `linear` owns weights (compose linear nodes with the op).
    equation:    the formula as text, for people (e.g. "y = a * sigmoid(a)").
    symbol:      a short label for pictures (default: the name).
    options:     option name -> default (bool, int, float or str), passed to `fn` by keyword.

    Cells that use a user op run the reference torch path (no generated kernels know it). Registering
    a name again from the same function (a module imported twice) replaces it; a clash with another
    op or a bad argument is a one-line ValueError (TypeError for a wrong type). Returns the Op.
    """
    where = f"register_op({name!r})"
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise ValueError(f"register_op: expected an op name of lower-case letters, digits and '_' "
                         f"(first a letter), got {name!r}")
    if not callable(fn):
        raise TypeError(f"{where}: expected a torch function, got {type(fn).__name__}")
    if has_weights:
        raise ValueError(f"{where}: ops with weights are not supported (only 'linear' owns weights); "
                         "compose linear nodes with a weightless op")
    if isinstance(arity, bool) or not isinstance(arity, int) or not 1 <= arity <= len(OPERANDS):
        raise ValueError(f"{where}: arity: expected 1, 2 or 3, got {arity!r}")
    opts = dict(options or {})
    for key, value in opts.items():
        if not (isinstance(key, str) and key.isidentifier()) or key in _TEMPLATE_FIELDS:
            raise ValueError(f"{where}: option names must be identifiers other than "
                             f"{', '.join(_TEMPLATE_FIELDS)}, got {key!r}")
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"{where}: option {key!r}: expected a bool, int, float or str default, "
                             f"got {type(value).__name__}")
    old = dict.get(OPS, name)
    if old is not None and (old.fn is None or _origin(old.fn) != _origin(fn)):
        by = "a built-in op" if old.fn is None else f"registered by {_origin(old.fn)}"
        raise ValueError(f"{where}: the name is taken ({by})")
    module = getattr(fn, "__module__", None) or "__main__"
    operands = ", ".join(f"{{{a}}}" for a in OPERANDS[:arity])
    keywords = "".join(f", {k}={{{k}!r}}" for k in opts)
    # The step code (nas.compile.plan) is generated Python with `torch` in scope: it reaches `fn`
    # through this module, which imports `module` first where this process has not registered it.
    expr = f"__import__('nas.cell.ops', fromlist=['call_op']).call_op({name!r}, {module!r}, {operands}{keywords})"
    op = Op(name, (arity, arity), bool(commutative), expr, (), options=_opts(**opts),
            symbol=symbol or name, fn=fn, equation=equation)
    _register(op)
    _remember(module)
    return op


def call_op(name: str, module: str, /, *operands: Any, **options: Any) -> Any:
    """Apply user op `name` (registered by `module`, imported here first if this process has not)."""
    op = dict.get(OPS, name)
    if op is None or op.fn is None:
        importlib.import_module(module)
        op = dict.get(OPS, name)
        if op is None or op.fn is None:
            raise KeyError(f"op {name!r}: importing {module} did not register it")
    return op.fn(*operands, **options)


def is_user_op(name: str) -> bool:
    """Whether `name` is an op registered by register_op (the generated kernels know only built-ins)."""
    op = OPS.get(name)
    return op is not None and op.fn is not None


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _remember(module: str) -> None:
    if module in ("__main__", "builtins"):
        return
    known = [m for m in os.environ.get(MODULES_ENV, "").split(",") if m]
    if module not in known:
        os.environ[MODULES_ENV] = ",".join([*known, module])


def load_plugins() -> bool:
    """Load the ops of plugins: once per process the entry points of the group `nas.ops` (each a
    module whose import registers ops, or a function that registers them when called), then the
    modules of $NAS_OP_MODULES not yet imported. True when anything was loaded."""
    if _plugins["loading"]:  # a plugin looking up an op while it loads
        return False
    _plugins["loading"], loaded = True, False
    try:
        if not _plugins["entry_points_loaded"]:
            _plugins["entry_points_loaded"] = True
            for ep in entry_points(ENTRY_POINTS):
                obj = load_entry_point(ep, ENTRY_POINTS)
                if callable(obj):
                    obj()
                loaded = True
        for module in os.environ.get(MODULES_ENV, "").split(","):
            if module and module not in sys.modules:
                try:
                    importlib.import_module(module)
                    loaded = True
                except Exception as e:  # noqa: BLE001 - the lookup then fails as an unknown op
                    log.warning("%s: cannot import %s (it registered ops in a parent process): %s",
                                MODULES_ENV, module, e)
        return loaded
    finally:
        _plugins["loading"] = False
