"""The plan (nas.compile.plan): the step code lowered from a spec, torch-free, readable, and naming
nothing from the spec."""

import re

import pytest
from random_cells import marked_names

from nas.cell import KNOWN_CELLS, known_cell
from nas.compile.plan import lower

# Identifiers the code generator may write: its own variable names, torch's API and keywords.
GENERATED = re.compile(r"(step|x|xw|H|torch|nn|functional|linear|split|[svgfwb]\d+)\Z")


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_step_code_has_no_names_from_the_spec(name):
    marked = marked_names(known_cell(name))
    source = lower(marked).step_source
    assert "NODE_" not in source and "STATE_" not in source
    torch_api = {"tanh", "sigmoid", "relu", "leaky_relu", "return", "def"}
    for word in re.findall(r"[A-Za-z_]\w*", source):
        assert GENERATED.match(word) or word in torch_api, word
    compile(source, "<step>", "exec")


def test_step_code_reads_like_the_cell():
    source = lower(known_cell("lstm")).step_source
    # group 0 (the x products) is computed before the time loop and arrives as xw
    assert source.startswith("def step(xw, x, s0, s1, w1, b1):")
    assert "torch.nn.functional.linear(s0, w1, b1)" in source
    assert source.count("torch.sigmoid") == 3 and source.count("torch.tanh") == 2
