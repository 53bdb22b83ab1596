"""Backends that run a sequence program: torch, C (loop, MKL, ops), Triton, CUDA graphs; the probe."""
