"""Which program a call runs: the cell's backend setting (nas.compile.backends.policy) applied.

Per call of the fast path: the first kernel backend that the setting allows, that can run on this
device in this dtype and whose probe passed here, gives the cell's program; a cell it has no form of
(or a backend that fails) leaves the next, and in the end the torch code, which always runs. On a
GPU a shape seen twice also replays as CUDA graphs unless the setting says off (`graphs_for`).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor

from nas.cell.spec import CellSpec
from nas.compile.backends import policy as settings
from nas.compile.backends.c.backend import C
from nas.compile.backends.cudagraphs import GraphCache
from nas.compile.backends.torch import TORCH
from nas.compile.backends.triton import TRITON
from nas.compile.sequence.program import Program

# The generated-kernel backends, in the order they are tried (each runs on one kind of device).
KERNEL_BACKENDS = (TRITON, C)


def select(cell, xs: Tensor, dtype: torch.dtype) -> Program:
    """The program for this call of `cell` (a CompiledCell) on xs in `dtype`: a kernel backend's
    where the cell's policy allows one that works here, else the torch code."""
    policy, device = cell.policy, xs.device
    # (an empty batch: autograd's expanded gradient of it has stride 0 everywhere)
    if xs.numel() == 0 or too_large(cell.spec):
        return TORCH.build(cell.spec, dtype, policy)
    for backend in KERNEL_BACKENDS:
        if backend.available(device, dtype) and policy.allows(backend.name) and backend.works(device, dtype, policy):
            prog = backend.build(cell.spec, dtype, policy)
            if prog is not None:
                return prog
    return TORCH.build(cell.spec, dtype, policy)


def graphs_for(cell, xs: Tensor) -> GraphCache | None:
    """The cell's CUDA graphs for this call, or None: run eagerly (graphs off, or not a GPU; the
    tests' emulated graphs run on any device)."""
    graphs = cell._graphs
    return graphs if (xs.is_cuda or graphs.emulated) and cell.policy.graphs() else None


@lru_cache(maxsize=1024)
def too_large(spec: CellSpec) -> bool:
    """Whether `spec` has more nodes than `kernel_node_cap()`; if so, warns (once per cell) that it
    runs the torch code. Cached per cell: `too_large.cache_clear()` forgets the answers."""
    cap = settings.kernel_node_cap()
    if len(spec.nodes) <= cap:
        return False
    warnings.warn(f"nas: cell {spec.name or spec.canonical_hash()[:12]} has {len(spec.nodes)} nodes, more than "
                  f"the {cap} for which C or Triton kernels are compiled (their compile time grows with the "
                  f"cell; NAS_MAX_KERNEL_NODES raises the cap): it runs the torch code, one call per op",
                  RuntimeWarning, stacklevel=5)
    return True
