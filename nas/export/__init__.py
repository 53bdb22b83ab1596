"""Export a discovered cell: a standalone torch module, a model card and the trained character model."""

from nas.export.cell import export_cell
from nas.export.codegen import ExportError, generate_module

__all__ = ["ExportError", "export_cell", "generate_module"]
