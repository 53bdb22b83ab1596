"""Large cells (up to CellSpec's 1000-node limit) build, train and export (how long they take:
benchmarks/compile_time.py).

Cells above nas.compile.backends.policy.MAX_KERNEL_NODES run the torch code instead of compiled C or Triton
kernels (whose compile time grows with the cell: a 300-node chain took 20-100 s of gcc), with one
warning; below it nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch
from random_cells import chain

from nas.cell import KNOWN_CELLS, known_cell
from nas.compile import CellRNN
from nas.compile.backends import policy, select
from nas.compile.backends.c.backend import C
from nas.compile.backends.triton import TRITON
from nas.compile.sequence.program import program
from nas.export import export_cell


@pytest.fixture
def no_kernels(monkeypatch):
    """Fails the test if a C or Triton program is asked for; the default cap, no cell warned about."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel program was built for a cell above the cap")

    monkeypatch.setattr(C, "build", refuse)
    monkeypatch.setattr(TRITON, "build", refuse)
    monkeypatch.delenv("NAS_MAX_KERNEL_NODES", raising=False)
    select.too_large.cache_clear()
    yield
    select.too_large.cache_clear()


def _cap_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "for which C or Triton kernels are compiled" in str(w.message)]


def test_a_300_node_chain_trains_and_exports(no_kernels, tmp_path):
    # (its time: benchmarks/compile_time.py)
    spec = chain(300, "chain300")
    assert len(spec.nodes) == 300
    torch.manual_seed(0)
    rnn = CellRNN(spec, 8, 8, num_layers=2).double()
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _ = rnn(x)
        out.sum().backward()
        rnn(x)  # a second call, and the second layer: no second warning
    expected = (f"nas: cell chain300 has 300 nodes, more than the {policy.MAX_KERNEL_NODES} for which C "
                f"or Triton kernels are compiled (their compile time grows with the cell; NAS_MAX_KERNEL_NODES "
                f"raises the cap): it runs the torch code, one call per op")
    assert _cap_warnings(caught) == [expected]
    grads = [p.grad for p in rnn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    # The same function as the reference path, and as the exported module with the same weights.
    ref = CellRNN(spec, 8, 8, num_layers=2, fused=False).double()
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(out, ref(x)[0])
    folder = export_cell(spec, tmp_path / "chain300", weights=rnn.state_dict())
    module_spec = importlib.util.spec_from_file_location("_exported_chain300", folder / "chain300.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
        exported = module.Chain300RNN(8, 8, num_layers=2).double()
        exported.load_state_dict(torch.load(folder / "weights.pt"))
        torch.testing.assert_close(exported(x)[0], out.detach())
    finally:
        del sys.modules[module_spec.name]


def test_a_cell_of_a_thousand_nodes_runs_the_torch_code(no_kernels):
    # (how soon it starts: benchmarks/compile_time.py)
    spec = chain(1000, "chain1000")
    rnn = CellRNN(spec, 8, 8)
    with pytest.warns(RuntimeWarning, match="has 1000 nodes, more than the 128"):
        out, _ = rnn(torch.randn(3, 2, 8))
    out.sum().backward()
    assert torch.isfinite(rnn.layers[0].weight_h.grad).all()


def test_the_cap_applies_above_it_only(monkeypatch, no_kernels):
    spec = known_cell("lstm")  # 13 nodes
    monkeypatch.setattr(policy, "MAX_KERNEL_NODES", 13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not select.too_large(spec)
    monkeypatch.setattr(policy, "MAX_KERNEL_NODES", 12)
    select.too_large.cache_clear()
    with pytest.warns(RuntimeWarning, match="has 13 nodes, more than the 12 "):
        assert select.too_large(spec)
    cell = CellRNN(spec, 4, 4).layers[0]
    xs = torch.randn(3, 2, 4)
    assert select.select(cell, xs, torch.float32) is program(spec)


def test_the_environment_sets_the_cap(monkeypatch, no_kernels):
    monkeypatch.setenv("NAS_MAX_KERNEL_NODES", "12")
    with pytest.warns(RuntimeWarning, match="has 13 nodes, more than the 12 "):
        assert select.too_large(known_cell("lstm"))
    monkeypatch.setenv("NAS_MAX_KERNEL_NODES", "twelve")
    with pytest.raises(ValueError, match="NAS_MAX_KERNEL_NODES: expected a non-negative integer, got 'twelve'"):
        policy.kernel_node_cap()


def test_the_cap_leaves_the_known_cells_their_kernels():
    assert max(len(known_cell(name).nodes) for name in KNOWN_CELLS) < policy.MAX_KERNEL_NODES
