"""Recurrent cells as values: the op registry, CellSpec, its canonical hash, networkx exchange, the
reference cells and drawings. Nothing here imports torch; nas.compile turns a spec into a module."""

from nas.cell.hashing import HASH_VERSION
from nas.cell.known import KNOWN_CELLS, identify, known_cell
from nas.cell.ops import OPS, Op
from nas.cell.spec import FORMAT, CellError, CellSpec, Node

__all__ = ["FORMAT", "HASH_VERSION", "KNOWN_CELLS", "OPS", "CellError", "CellSpec", "Node", "Op",
           "identify", "known_cell"]
