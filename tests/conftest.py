"""Test-session settings.

Without a GPU, the fused Triton kernels of nas.cell.gpugen run in Triton's CPU interpreter
(tests/test_gpugen.py). Triton reads TRITON_INTERPRET when it is imported, so it is set here,
before any test module imports it; with a GPU the kernels run on it."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
