"""MKL's packed GEMM, for the per-step products of the CPU's C-kernel code (nas.cell.cgen).

An RNN multiplies by the same weight matrix at every step. MKL can lay such a matrix out once in
its kernels' internal format (cblas_sgemm_pack) and then multiply by it repeatedly without repacking
(cblas_sgemm_compute). Measured here (2 cores, float32), the per-step products of batch 32 and
hidden 256 run 20-45% faster than torch.mm's, which repacks the weight at every call.

torch's CPU wheels for x86-64 Linux link MKL into libtorch_cpu and export these functions, with
MKL's threading set by torch.set_num_threads; elsewhere (or for float64: MKL has no packed dgemm
interface) `available()` is False and the products stay torch's.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import torch
from torch import Tensor

ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162  # cblas enum values
_INTS = [ctypes.c_int] * 3 + [ctypes.c_int64] * 3


@cache
def _library() -> ctypes.CDLL | None:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)  # already loaded by torch: the same library, the same MKL state
    except OSError:
        return None
    names = ("cblas_sgemm_pack_get_size", "cblas_sgemm_pack", "cblas_sgemm_compute")
    if not all(hasattr(lib, n) for n in names):
        return None
    lib.cblas_sgemm_pack_get_size.argtypes = [ctypes.c_int] + [ctypes.c_int64] * 3
    lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    lib.cblas_sgemm_pack.argtypes = _INTS + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.cblas_sgemm_pack.restype = None
    lib.cblas_sgemm_compute.argtypes = _INTS + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                                ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]
    lib.cblas_sgemm_compute.restype = None
    return lib


def available() -> bool:
    return os.environ.get("NAS_MKL_PACKED", "1") != "0" and _library() is not None


def pack(b: Tensor, rows: int) -> Tensor:
    """b (K, N) float32, the right factor of (rows, K) @ (K, N) products, in MKL's packed format
    (a byte tensor that must outlive the products; rows: their row count, M)."""
    if b.stride(1) == 1:
        trans, src, ld = NO_TRANS, b, b.stride(0)
    elif b.stride(0) == 1:  # the transpose of a row-major matrix (W^T of a weight W)
        trans, src, ld = TRANS, b, b.stride(1)
    else:
        trans, src, ld = NO_TRANS, b.contiguous(), b.shape[1]
    K, N = b.shape
    lib = _library()
    out = torch.empty(lib.cblas_sgemm_pack_get_size(B_MATRIX, rows, N, K) + 64, dtype=torch.uint8)
    lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, trans, rows, N, K, 1.0, src.data_ptr(), ld, out.data_ptr())
    return out


def compute():
    """cblas_sgemm_compute, to call as (ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a, lda, packed, 0,
    beta, c, ldc): c = a @ b + beta * c, with b packed by `pack`."""
    return _library().cblas_sgemm_compute
