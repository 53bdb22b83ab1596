"""MKL's packed GEMM, for the per-step products of the CPU's C-kernel code (nas.compile.backends.c.codegen).

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

from nas.compile.backends.policy import mkl_packed

ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162  # cblas enum values
# The unsuffixed functions are MKL's LP64 interface: MKL_INT is a 32-bit int (the ILP64 ones end in _64).
_INT = ctypes.c_int
_INTS = [_INT] * 6


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
    lib.cblas_sgemm_pack_get_size.argtypes = [_INT] * 4
    lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    lib.cblas_sgemm_pack.argtypes = _INTS + [ctypes.c_float, ctypes.c_void_p, _INT, ctypes.c_void_p]
    lib.cblas_sgemm_pack.restype = None
    lib.cblas_sgemm_compute.argtypes = _INTS + [ctypes.c_void_p, _INT, ctypes.c_void_p, _INT, ctypes.c_float,
                                                ctypes.c_void_p, _INT]
    lib.cblas_sgemm_compute.restype = None
    return lib


def available() -> bool:
    """Whether MKL's functions can be called here (and the setting's alias NAS_MKL_PACKED=0 does not hide them)."""
    return mkl_packed() and _library() is not None


def pack(b: Tensor, rows: int) -> Tensor:
    """b (K, N) float32, the right factor of (rows, K) @ (K, N) products, in MKL's packed format
    (a byte tensor that must outlive the products; rows: their row count, M)."""
    K, N = b.shape
    # MKL wants a leading dimension of at least the row length, also where a size-1 dimension
    # makes the stride meaningless (torch may report 1 there).
    if b.is_contiguous():
        trans, src, ld = NO_TRANS, b, N
    elif b.t().is_contiguous():  # the transpose of a row-major matrix (W^T of a weight W)
        trans, src, ld = TRANS, b, K
    else:
        trans, src, ld = NO_TRANS, b.contiguous(), N
    lib = _library()
    out = torch.empty(lib.cblas_sgemm_pack_get_size(B_MATRIX, rows, N, K) + 64, dtype=torch.uint8)
    lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, trans, rows, N, K, 1.0, src.data_ptr(), ld, out.data_ptr())
    return out


def gemm(dtype: torch.dtype) -> int | None:
    """The address of the C function nas.compile.backends.c.loop's loops call for the products of `dtype`:
    float32 cblas_sgemm_compute (weights packed by `pack`), float64 the Fortran-interface DGEMM
    (LP64, column-major); None where this torch does not export it."""
    return _address({torch.float32: "cblas_sgemm_compute", torch.float64: "DGEMM"}.get(dtype)) if available() else None


@cache
def _address(name: str | None) -> int | None:
    # (cached: the C backend asks for every call, through loop.available)
    lib = _library()
    if lib is None or name is None or not hasattr(lib, name):
        return None
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def compute():
    """cblas_sgemm_compute, to call as (ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a, lda, packed, 0,
    beta, c, ldc): c = a @ b + beta * c, with b packed by `pack`."""
    return _library().cblas_sgemm_compute
