"""Cell pictures: every reference cell draws to PNG and SVG, the layout keeps boxes apart, and the
corner cases (several state vectors, a state passed through, operand marks) are drawn."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import matplotlib.image
import pytest

from nas.cell.draw import draw_cell
from nas.cell.known import KNOWN_CELLS, known_cell
from nas.cell.layout import layout
from nas.cell.ops import OPS
from nas.cell.spec import CellSpec


def spec(state, nodes, outputs, name="test"):
    return CellSpec.from_dict({"name": name, "state": state, "nodes": nodes, "outputs": outputs})


def three_state():
    """h, c, m: m is a gated memory, c an LSTM-like cell; uses sub (operand marks + and −)."""
    return spec(["h", "c", "m"], {
        "m_lin": {"op": "linear", "in": ["x", "m"]}, "m_new": {"op": "sigmoid", "in": ["m_lin"]},
        "keep": {"op": "mul", "in": ["m_new", "c"]}, "c_new": {"op": "add", "in": ["keep", "x"]},
        "d": {"op": "sub", "in": ["c_new", "h"]}, "h_new": {"op": "tanh", "in": ["d"]},
    }, {"h": "h_new", "c": "c_new", "m": "m_new"})


def pass_through():
    """c is carried over unchanged: its output is the input c itself."""
    return spec(["h", "c"], {"a": {"op": "linear", "in": ["x", "h", "c"]}, "h_new": {"op": "tanh", "in": ["a"]}},
                {"h": "h_new", "c": "c"})


def check_png(path):
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 4000 and 700 <= width <= 8000, image.shape
    assert image[..., :3].std() > 0.05  # not blank


def check_svg(path, cell):
    text = path.read_text()
    for name in cell.inputs:
        assert f'id="input-{name}"' in text
    for n in cell.nodes:
        assert f'id="node-{n.name}"' in text
        assert f">{OPS[n.op].symbol.replace('-', '−')}</text>" in text
    for s in cell.state:
        assert f'id="output-{s}"' in text
    return text


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_draw_to_png_and_svg(tmp_path, name):
    cell = known_cell(name)
    png = draw_cell(cell, tmp_path / f"{name}.png")
    svg = draw_cell(cell, tmp_path / f"{name}.svg")
    assert png == tmp_path / f"{name}.png" and svg.exists()
    check_png(png)
    text = check_svg(svg, cell)
    assert f">{name}</text>" in text  # the default title is the cell's name
    if name in ("lstm", "gru", "enas"):
        assert ">tanh</text>" in text and ">σ</text>" in text


@pytest.mark.parametrize("name", ["lstm", "nas_cell", "enas", "darts_v2"])
def test_layout_keeps_boxes_and_columns_apart(name):
    items, _ = layout(known_cell(name))
    columns = defaultdict(list)
    for it in items.values():
        columns[it.layer].append(it)
    for layer, its in columns.items():
        its.sort(key=lambda it: it.y)
        for a, b in pairwise(its):
            assert b.y - b.height / 2 >= a.y + a.height / 2 + 0.05, (layer, a.key, b.key)
    right = [max(it.x + it.width / 2 for it in columns[k]) for k in sorted(columns)]
    left = [min(it.x - it.width / 2 for it in columns[k]) for k in sorted(columns)]
    assert all(r < next_left for r, next_left in zip(right, left[1:]))
    assert {it.kind for it in columns[0]} == {"input"}
    assert {it.kind for it in columns[max(columns)]} == {"output"}


def test_three_state_vectors_and_sub_marks(tmp_path):
    cell = three_state()
    check_png(draw_cell(cell, tmp_path / "three.png"))
    text = check_svg(draw_cell(cell, tmp_path / "three.svg", title="three states"), cell)
    assert ">three states</text>" in text
    assert text.count(">−</text>") == 2  # the sub node's symbol and its second operand's mark


def test_blend_operands_are_marked(tmp_path):
    text = draw_cell(known_cell("gru"), tmp_path / "gru.svg").read_text()
    for mark in "zab":
        assert f">{mark}</text>" in text


def test_output_passed_through_from_an_input(tmp_path):
    cell = pass_through()
    check_png(draw_cell(cell, tmp_path / "pass.png"))
    check_svg(draw_cell(cell, tmp_path / "pass.svg"), cell)
    items, edges = layout(cell)
    (edge,) = [e for e in edges if e.chain[-1] == "c'"]
    assert edge.chain[0] == "c" and items["c'"].layer == items["h'"].layer


def test_creates_directories_and_is_deterministic(tmp_path):
    a = draw_cell(known_cell("lstm"), tmp_path / "deep" / "er" / "a.svg")
    b = draw_cell(known_cell("lstm"), str(tmp_path / "b.svg"))
    assert a.read_bytes() == b.read_bytes()


def test_leaves_no_pyplot_figures_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for i in range(3):
        draw_cell(known_cell("rnn_tanh"), tmp_path / f"{i}.png")
    assert plt.get_fignums() == before


def test_unknown_suffix_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"expected a path ending in \.png or \.svg, got .*cell\.jpg"):
        draw_cell(known_cell("lstm"), tmp_path / "cell.jpg")
    assert not (tmp_path / "cell.jpg").exists()
