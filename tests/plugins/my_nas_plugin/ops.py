"""User ops: swish (Ramachandran et al. 2017) and a scaled difference of two operands."""

import torch

from nas.cell.ops import register_op


def swish(a: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return a * torch.sigmoid(beta * a)


def half_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a - b)


register_op("swish", swish, 1, equation="y = a * sigmoid(beta * a)", symbol="sw", options={"beta": 1.0})
register_op("half_diff", half_diff, 2, equation="y = (a - b) / 2")
