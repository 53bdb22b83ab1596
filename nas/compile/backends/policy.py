"""The backend setting: which generated code a cell's fast path may run, in one typed value.

    Policy(backend="auto", cuda_graphs="auto", c_loop=True)

backend      "auto": the fastest code that works here, per call: Triton kernels on a GPU (float32,
             bfloat16, float16, Triton installed), C kernels on the CPU (float32, float64, a C
             compiler found), else the torch code (one call per op). "c" / "triton": only that
             kernel backend (where it cannot run: the torch code). "torch": always the torch code.
cuda_graphs  "auto" / "on": on a GPU a shape seen twice replays as CUDA graphs; "off": never.
c_loop       a sub-option of the C backend: with MKL (torch's x86-64 wheels) its time loop runs in C;
             False keeps it in Python (the kernels are the same).

Whatever the setting, a cell the chosen backend cannot run (an op without a form there, a probe
that failed, more than `kernel_node_cap()` nodes) runs the torch code. `CellRNN(..., fused=False)`
is not a backend: it is the reference path, the step code under autograd, that the fast path is
tested against.

Environment variables are aliases, read here only, each at the time of a call (docs/performance.md):
NAS_TRITON=0 and NAS_C_KERNELS=0 take that backend out of "auto"; NAS_CUDA_GRAPHS=0 makes "auto"
graphs off; NAS_C_LOOP=0 is c_loop=False; NAS_MKL_PACKED=0 hides MKL from the C backend;
NAS_MAX_KERNEL_NODES sets the node cap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from nas.config import BACKENDS, CUDA_GRAPHS  # (beside TrainConfig, which checks them torch-free)

# The alias that takes each kernel backend out of "auto".
_OFF_SWITCH = {"triton": "NAS_TRITON", "c": "NAS_C_KERNELS"}


def _on(variable: str) -> bool:
    return os.environ.get(variable, "1") != "0"


@dataclass(frozen=True)
class Policy:
    """The backend setting of a cell (see the module docstring). Invalid values raise ValueError."""

    backend: str = "auto"
    cuda_graphs: str = "auto"
    c_loop: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.cuda_graphs not in CUDA_GRAPHS:
            raise ValueError(f"cuda_graphs: expected one of {', '.join(CUDA_GRAPHS)}, got {self.cuda_graphs!r}")
        if self.c_loop is not True and self.c_loop is not False:
            raise ValueError(f"c_loop: expected True or False, got {self.c_loop!r}")

    def replace(self, **changes) -> Policy:
        return replace(self, **changes)

    def allows(self, kernels: str) -> bool:
        """Whether kernel backend `kernels` ("c" or "triton") may run (the aliases applied to "auto")."""
        if self.backend == "auto":
            return _on(_OFF_SWITCH[kernels])
        return self.backend == kernels

    def graphs(self) -> bool:
        """Whether a GPU call may replay as CUDA graphs."""
        return self.cuda_graphs == "on" or (self.cuda_graphs == "auto" and _on("NAS_CUDA_GRAPHS"))

    def loop(self) -> bool:
        """Whether the C backend may run its time loop in C."""
        return self.c_loop and _on("NAS_C_LOOP")


DEFAULT = Policy()


def from_switches(triton: bool = True, c_kernels: bool = True, cuda_graphs: bool = True,
                  c_loop: bool = True) -> Policy:
    """The setting equal to the four boolean switches a cell had before it (for cells pickled then)."""
    backend = {(True, True): "auto", (True, False): "triton", (False, True): "c"}.get((triton, c_kernels), "torch")
    return Policy(backend, "auto" if cuda_graphs else "off", c_loop)


def mkl_packed() -> bool:
    """Whether the C backend may call MKL (NAS_MKL_PACKED=0: not, as on a torch without it)."""
    return _on("NAS_MKL_PACKED")


# Cells with more nodes than this run the torch code (one call per op) instead of generated C or
# Triton kernels. The kernels' compile time grows with their source, about 1 KB of C per node: gcc
# -O3 took 1.1 s of CPU for a 60-node chain with a linear node every 4th, 3.2 s at 128 nodes, 8 s at
# 300 (20-100 s of wall time under heavy load), per dtype; the torch code of a 1000-node cell is made
# in under a second. Its steps are slower (~4x for that 300-node chain at hidden size 32), so a
# long run of a large cell may raise the cap with $NAS_MAX_KERNEL_NODES. Every cell of
# nas.cell.known and of the default search spaces is far below it (enas: 61 nodes).
MAX_KERNEL_NODES = 128


def kernel_node_cap() -> int:
    """$NAS_MAX_KERNEL_NODES where it is set, else MAX_KERNEL_NODES."""
    text = os.environ.get("NAS_MAX_KERNEL_NODES")
    if text is None:
        return MAX_KERNEL_NODES
    if not text.strip().isdigit():
        raise ValueError(f"NAS_MAX_KERNEL_NODES: expected a non-negative integer, got {text!r}")
    return int(text)
