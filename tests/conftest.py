"""Test-session settings.

Tests mirror the packages (tests/cell, tests/compile, tests/search, ...). Their shared helpers
(random_cells.py here, and a few functions that one test file borrows from another, such as
test_search.config) are imported by module name, so this folder and its subfolders are on sys.path;
test file names are unique across the folders for the same reason.

Without a GPU, the fused Triton kernels of nas.compile.backends.triton run in Triton's CPU interpreter
(tests/compile/test_triton.py). Triton reads TRITON_INTERPRET when it is imported, so it is set here,
before any test module imports it; with a GPU the kernels run on it."""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = Path(__file__).parent
# Appended, not prepended: the repository's own packages (benchmarks, nas) must win over these folders.
for _folder in [_HERE, *sorted(p for p in _HERE.iterdir() if p.is_dir() and p.name not in {"plugins", "__pycache__"})]:
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))
