"""The whole-sequence torch code (nas.compile.sequence: fast_ops, layout, forward, backward): its fused
torch forms of the ops against the registry, and generated code that names nothing from the spec.
(tests/compile/test_fast_path.py holds the code to the reference path.)"""

import re

import pytest
import torch
from random_cells import SOURCE_IN_SLAB, marked_names

from nas.cell import KNOWN_CELLS, OPS, known_cell
from nas.cell.ops import render
from nas.compile.plan import lower
from nas.compile.sequence import fast_ops
from nas.compile.sequence.forward import generate
from nas.compile.sequence.layout import Layout
from nas.compile.sequence.program import _ATEN

B, H = 3, 4
TOL = {"rtol": 1e-10, "atol": 1e-12}


# -- the fast forms against the registry -------------------------------------------------------
OPERANDS = {"add": 2, "sub": 2, "mul": 2, "blend": 3, "mean": 3, "tanh": 1, "sigmoid": 1, "relu": 1,
            "leaky_relu": 1}


@pytest.mark.parametrize("name", sorted(fast_ops.KERNELS))
def test_kernel_matches_registry(name):
    op, kernel = OPS[name], fast_ops.KERNELS[name]
    n = OPERANDS[name]
    torch.manual_seed(0)
    xs = [torch.randn(B, H, dtype=torch.float64) for _ in range(n)]
    names = [f"a{j}" for j in range(n)]
    env = {"torch": torch, **dict(zip(names, xs)), **_ATEN}
    options = dict(op.options)
    want = eval(render(op.expr, names, options), env)
    got = eval(render(kernel.value, names, options, out=""), env)
    torch.testing.assert_close(got, want, **TOL)
    env.update(g=torch.randn(B, H, dtype=torch.float64), y=want)
    if kernel.shared:
        env["s"] = eval(render(kernel.shared, names, options, g="g", y="y"), env)
    for j in range(n):
        template = op.grad[min(j, len(op.grad) - 1)]
        want_grad = eval(render(template, names, options, g="g", y="y"), env)
        terms = kernel.grads[min(j, len(kernel.grads) - 1)]
        total = sum(_term_value(t, names, options, env) for t in terms)
        torch.testing.assert_close(total, want_grad, **TOL)


def _term_value(term, names, options, env):
    fill = lambda s: eval(render(s, names, options, g="g", y="y", s="s"), env)
    if isinstance(term, fast_ops.Alias):
        return fill(term.src) * float(render(term.alpha, names, options))
    if isinstance(term, fast_ops.Mul):
        return fill(term.p) * fill(term.q) * float(term.value)
    return fill(term.value)


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_sequence_code_has_no_names_from_the_spec(name):
    marked = marked_names(known_cell(name))
    code = generate(lower(marked))
    for source in (code.forward_source, code.backward_source):
        assert "NODE_" not in source and "STATE_" not in source
        compile(source, "<sequence>", "exec")
        assert not re.search(r"\bexec\b|\beval\b|__", source)


def test_gradients_written_into_the_forward_buffers():
    # The backward writes a gradient into a forward buffer that nothing reads after it.
    assert Layout(lower(known_cell("lstm"))).hosts == {"G1": "dG1"}
    assert Layout(lower(SOURCE_IN_SLAB)).hosts == {"G2": "dG2"}
    assert Layout(lower(known_cell("nas_cell"))).hosts == {"G1": "dG1", "V9": "dxo0"}
