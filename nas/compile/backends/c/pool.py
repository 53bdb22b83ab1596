"""Reused buffers for the C code's large intermediate values (nas.compile.backends.c.codegen)."""

from __future__ import annotations

import bisect
import math
import sys
import threading

import torch


class Pool:
    """Large buffers for the C code's intermediate values, kept for reuse. A fresh allocation of
    this size comes from mmap, and touching it costs a page fault per 4 KiB: for darts_v2 at batch
    128 x 256 steps x hidden 512, 865k faults and about a quarter of a training step.

    A block is handed out again only when nothing else references its storage (no tensor, view,
    storage object or autograd graph) and it was never shared with another process; a request takes
    the smallest idle block of 1 to 2 times its size. Like torch's CUDA caching allocator, the pool
    keeps what was in use together at the peak, so a training loop stops allocating after its first
    steps. It cannot grow without bound: before allocating, it lets go of idle blocks (least
    recently used first) until it holds at most twice what is in use, and a block nobody took for
    `expiry` requests goes too. The outputs and states that a call returns never come from it."""

    def __init__(self, expiry: int = 1024, minimum: int = 1 << 20) -> None:
        self.expiry, self.minimum = expiry, minimum
        self.blocks: list[list] = []  # [bytes, block, the request that last took it], by size
        self.requests = 0
        self.lock = threading.Lock()

    def take(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = math.prod(shape) * like.element_size()
        if nbytes < self.minimum or not _USE_COUNT:  # malloc reuses small blocks without faults
            return like.new_empty(shape)
        with self.lock:  # (the view is made inside: from then on the block is not idle)
            self.requests += 1
            if self.requests % 64 == 0:
                self._release(lambda e: e[2] < self.requests - self.expiry)
            entry = next((e for e in self.blocks[bisect.bisect_left(self.blocks, nbytes, key=_size):]
                          if e[0] < 2 * nbytes and _idle(e[1])), None)
            if entry is None:
                entry = self._allocate(nbytes)
            entry[2] = self.requests
            return entry[1][:nbytes].view(like.dtype).view(shape)

    def _allocate(self, nbytes: int) -> list:
        idle = [e for e in self.blocks if _idle(e[1])]
        held = sum(e[0] for e in self.blocks)
        busy = held - sum(e[0] for e in idle)
        gone = set()
        for e in sorted(idle, key=lambda e: e[2]):
            if held + nbytes <= 2 * (busy + nbytes):
                break
            gone.add(id(e))
            held -= e[0]
        self.blocks[:] = [e for e in self.blocks if id(e) not in gone]
        size = _rounded(nbytes)
        entry = [size, torch.empty(size, dtype=torch.uint8), 0]
        bisect.insort(self.blocks, entry, key=_size)
        return entry

    def _release(self, old) -> None:
        # Shared blocks belong to the processes they were sent to now: never reused.
        self.blocks[:] = [e for e in self.blocks if not e[1].is_shared() and not (old(e) and _idle(e[1]))]

    def clear(self) -> None:
        with self.lock:
            self.blocks.clear()


def _size(entry: list) -> int:
    return entry[0]


def _rounded(nbytes: int) -> int:
    """Up to the next of 8 sizes per octave (at most 12.5% more): a longer sequence next time may
    still fit."""
    step = 1 << max(nbytes.bit_length() - 4, 0)
    return -(-nbytes // step) * step


# How many references a storage has (private to torch, present since 2.0; without it, no pool).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _references(block: torch.Tensor) -> tuple[int, int]:
    """(C++ references to the block's storage, Python references to its storage object): a caller
    holding only the storage object shows in the second."""
    storage = block.untyped_storage()
    return _USE_COUNT(storage._cdata), sys.getrefcount(storage)


def _idle(block: torch.Tensor) -> bool:
    """Only the pool references the block, and it was never shared with another process."""
    return not block.is_shared() and _references(block) == _IDLE


_IDLE = _references(torch.empty(1)) if _USE_COUNT else (0, 0)  # a tensor nothing else references
POOL = Pool()
