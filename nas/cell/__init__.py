"""Recurrent cells as values (CellSpec), their compiler to torch, and the reference cells."""

from nas.cell.compile import CellRNN, CompiledCell, compile_cell
from nas.cell.hashing import HASH_VERSION
from nas.cell.known import KNOWN_CELLS, identify, known_cell
from nas.cell.ops import OPS, Op
from nas.cell.spec import FORMAT, CellError, CellSpec, Node

__all__ = ["FORMAT", "HASH_VERSION", "KNOWN_CELLS", "OPS", "CellError", "CellRNN", "CellSpec",
           "CompiledCell", "Node", "Op", "compile_cell", "identify", "known_cell"]
