"""The compiler: CellSpec -> plan (torch-free) -> module (CompiledCell, CellRNN) running the whole
sequence as one autograd node (fast_path.py) over generated code (sequence/) on the fastest backend that
works (backends/)."""

from nas.compile.backends.policy import Policy
from nas.compile.modules import CellRNN, CompiledCell, compile_cell

__all__ = ["CellRNN", "CompiledCell", "Policy", "compile_cell"]
