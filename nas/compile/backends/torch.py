"""The torch backend: the torch code of nas.compile.sequence.forward, one torch call per op.

It runs everywhere, in every dtype, and is what every other backend is checked against
(nas.compile.backends.probe) and falls back to.
"""

from __future__ import annotations

import torch

from nas.cell.spec import CellSpec
from nas.compile.backends.policy import DEFAULT, Policy
from nas.compile.sequence.program import Program, program


class TorchBackend:
    """The Backend interface of nas.compile.backends.base, for the torch code."""

    name = "torch"

    def available(self, device: torch.device, dtype: torch.dtype) -> bool:
        return True

    def works(self, device: torch.device, dtype: torch.dtype, policy: Policy = DEFAULT) -> bool:
        return True

    def build(self, spec: CellSpec, dtype: torch.dtype, policy: Policy = DEFAULT) -> Program:
        return program(spec)


TORCH = TorchBackend()
