"""gated_act: h' = act(W [x, h]), optionally gated as h' = z * act(W [x, h]) + (1 - z) * h.

Options: acts, the activations to choose from (any registered op of one operand).
"""

from collections.abc import Sequence
from typing import Any

import my_nas_plugin.ops  # noqa: F401 - registers swish, which the default acts use
from nas.cell import CellSpec

ACTS = ("swish", "tanh")


def sample(trial, *, acts: Sequence[str] = ACTS) -> CellSpec:
    act = trial.suggest_categorical("act", list(acts))
    gated = trial.suggest_categorical("gated", [False, True])
    nodes: dict[str, Any] = {"a": {"op": "linear", "in": ["x", "h"]}, "y": {"op": act, "in": ["a"]}}
    out = "y"
    if gated:
        nodes.update(zl={"op": "linear", "in": ["x", "h"]}, z={"op": "sigmoid", "in": ["zl"]},
                     mix={"op": "blend", "in": ["z", "y", "h"]})
        out = "mix"
    return CellSpec.from_dict({"state": ["h"], "nodes": nodes, "outputs": {"h": out}})


def known_params(*, acts: Sequence[str] = ACTS) -> dict[str, dict[str, Any]]:
    if not acts or len(set(acts)) != len(acts):
        raise ValueError(f"gated_act: acts must be distinct names, got {acts!r}")
    return {"rnn_tanh": {"act": "tanh", "gated": False}} if "tanh" in acts else {}
