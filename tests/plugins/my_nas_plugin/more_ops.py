"""An op that only a plugin's entry point (group nas.ops) registers: a function called once."""

import torch

from nas.cell.ops import register_op


def cube(a: torch.Tensor) -> torch.Tensor:
    return a * a * a


def register() -> None:
    register_op("cube", cube, 1, equation="y = a^3")
