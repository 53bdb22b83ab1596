"""The whole-sequence code of a cell: its program (program.py: the calling convention every backend
keeps, and the torch code), generated from a layout (layout.py) into a forward (forward.py) and a
backward (backward.py) with fused torch forms of the ops (fast_ops.py); nas.compile.fast_path runs it
as one autograd node per layer."""
