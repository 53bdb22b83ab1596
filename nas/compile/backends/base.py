"""The one interface every backend of the fast path implements.

A backend turns a cell into a whole-sequence `Program` (nas.compile.sequence.program) for one kind
of device and dtype:

    name                              "torch", "c", "triton": the value of Policy.backend naming it
    available(device, dtype) -> bool  cheap: can it run there at all (device type, dtype)?
    works(device, dtype, policy)      the probe, cached: does its program compute what the torch
                                      code computes here (nas.compile.backends.probe)?
    build(spec, dtype, policy)        the cell's program (cached), or None where it has no form
                                      of the cell (an op it lacks, a compiler that failed)

Implementations: nas.compile.backends.torch.TORCH (always works: the fallback),
nas.compile.backends.c.backend.C, nas.compile.backends.triton.TRITON. None subclasses another; what
the C and Triton backends share (the stage driver) is in nas.compile.backends.driver and
stage_code. CUDA graphs (nas.compile.backends.cudagraphs) are not a program of their own but a wrapper
that replays another backend's program on a GPU, where the setting allows (select.graphs_for).
nas.compile.backends.select picks a backend per call from the cell's Policy.
"""

from __future__ import annotations

from typing import Protocol

import torch

from nas.cell.spec import CellSpec
from nas.compile.backends.policy import Policy
from nas.compile.sequence.program import Program


class Backend(Protocol):
    name: str

    def available(self, device: torch.device, dtype: torch.dtype) -> bool: ...

    def works(self, device: torch.device, dtype: torch.dtype, policy: Policy) -> bool: ...

    def build(self, spec: CellSpec, dtype: torch.dtype, policy: Policy) -> Program | None: ...
