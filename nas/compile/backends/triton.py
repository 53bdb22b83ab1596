"""The Triton backend: on a GPU, per step, cuBLAS products and one fused Triton kernel per stage.

The torch code of nas.compile.sequence.forward makes one torch call per elementwise op; on a GPU each
call is a kernel launch of a few microseconds over a tiny (B, H) tensor, and an LSTM step costs
twenty of them where cuDNN runs two. Here each stage of a step (nas.compile.backends.stages) is one
generated Triton kernel (`TritonKernel`, written by the stage driver of
nas.compile.backends.stage_code): it loads what the stage reads, computes its nodes in float32
registers, and stores what leaves the stage; its backward kernel recomputes the stage from the same
loads. The products and their gradients stay cuBLAS calls.

`TRITON.available`: a CUDA device, float32/bfloat16/float16; `works`: the probe
(nas.compile.backends.probe), once per device and dtype; `build`: the cell's program, or None when
Triton is missing or an op has no Triton form (nas.compile.backends.triton_ops).
"""

from __future__ import annotations

import contextlib
import importlib.util
import linecache
import os
import warnings
from functools import cache, lru_cache

import torch

from nas.cell.spec import CellSpec
from nas.compile.backends import probe, stage_code
from nas.compile.backends.driver import StageDriver, StageKernel, supported
from nas.compile.backends.policy import DEFAULT, Policy
from nas.compile.backends.triton_ops import TRITON as TRITON_OPS
from nas.compile.plan import lower
from nas.compile.sequence.program import HELPERS, Program

BLOCK = 256
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class TritonKernel(StageKernel):
    """One Triton kernel over the B * H elements of a step: its pointer arguments (per-step views
    named by the driver) and its body; the products and the loop are the stage driver's defaults
    (nas.compile.backends.driver.StageKernel)."""

    OPS = TRITON_OPS  # the ops' templates in this kernel language
    # The driver's lines before the loop (forward and backward).
    SETUP = ("    N, grid = B * H, (triton.cdiv(B * H, BLOCK),)",)

    def assign(self, var: str, expr: str) -> None:
        self.body.append(f"{var} = {expr}")

    def load(self, views: list[str], var: str) -> str:
        parts = []
        for v in views:
            i = self._ptr(v)
            parts.append(f"tl.load(p{i} + r * r{i} + c * c{i}, mask=m).to(tl.float32)")
        self.assign(var, " + ".join(parts))
        return var

    def store(self, view: str, value: str) -> None:
        i = self._ptr(view)
        self.body.append(f"tl.store(p{i} + r * r{i} + c * c{i}, {value}, mask=m)")

    def source(self) -> str:
        params = "".join(f"p{i}, r{i}, c{i}, " for i in range(len(self.views)))
        head = [f"@triton.jit\ndef {self.name}(N, H, {params}BLOCK: tl.constexpr):",
                "    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
                "    m = o < N", "    r = o // H", "    c = o - r * H"]
        return "\n".join(head + [f"    {line}" for line in self.body]) + "\n"

    def launch(self, d: StageDriver) -> str:
        args = "".join(f"{v}, *{d.strides[v]}, " for v in self.views)
        return f"{self.name}[grid](N, H, {args}BLOCK={BLOCK})"


class TritonBackend:
    """The Triton kernels (see the module docstring): the Backend interface of nas.compile.backends.base."""

    name = "triton"

    def available(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cuda" and dtype in DTYPES

    def works(self, device: torch.device, dtype: torch.dtype, policy: Policy = DEFAULT) -> bool:
        return triton_works(device, dtype)

    def build(self, spec: CellSpec, dtype: torch.dtype, policy: Policy = DEFAULT) -> Program | None:
        return gpu_program(spec)


TRITON = TritonBackend()


@lru_cache(maxsize=1024)
def gpu_program(spec: CellSpec) -> Program | None:
    """`spec`'s program with one fused Triton kernel per stage of a step, or None when Triton is
    missing or an op has no Triton form. (Under TRITON_INTERPRET=1 the kernels run in Triton's CPU
    interpreter: how the tests run it without a GPU.) The same program serves every float dtype."""
    plan = lower(spec)
    if importlib.util.find_spec("triton") is None or not supported(plan, TritonKernel):
        return None
    import triton
    import triton.language as tl

    code, kernels = stage_code.generate(plan, TritonKernel)
    namespace = {**HELPERS, "triton": triton, "tl": tl, "BLOCK": BLOCK}
    # Triton reads a kernel's source back (inspect.getsource): the generated text goes into
    # linecache under a name of its own, as if it were a file.
    source = kernels + "\n\n" + code.forward_source + "\n" + code.backward_source
    name = f"<cell gpu {spec.canonical_hash()}>"
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    exec(compile(source, name, "exec"), namespace)  # noqa: S102 - generated: no spec text in it
    if os.environ.get("TRITON_INTERPRET") != "1":  # (the interpreter reads it again at each call)
        del linecache.cache[name]  # Triton read it when the kernels were defined; searches make thousands
    return Program(code, namespace["forward"], namespace["backward"])


def triton_works(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the Triton kernels compile here and compute what the torch code computes on `device`
    in `dtype` (checked once; never during a CUDA graph capture, which a probe would break)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False  # the torch kernels, this once
    return _probe(device, dtype)


@cache
def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        # The probe's tensors are made on the current device's stream: make it `device`'s.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            spec = probe.probe_cell()
            prog = gpu_program(spec)
            if prog is None:
                raise RuntimeError("no Triton form of the probe cell")
            probe.check(prog, spec, device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - any failure means: do not use them
        warnings.warn(f"nas: the Triton kernels do not run on {device} in {dtype} ({type(err).__name__}: "
                      f"{err}); using the torch kernels instead", RuntimeWarning, stacklevel=3)
        return False
    return True
