"""Exporting a cell as a standalone folder: readable torch code, the spec, a model card, weights.

`export_cell(spec, out_dir)` writes

    <name>.py    a module that needs only torch (and Python >= 3.10): `<Name>Cell`, one step shaped
                 like torch.nn.LSTMCell, and `<Name>RNN`, sequences shaped like torch.nn.LSTM
                 (`num_layers`, `dropout`, `batch_first`). One line of code per node, named after the
                 node; the equations in the docstring; the state_dict names and shapes of
                 nas.compile.CellRNN, so a CellRNN state dict loads into `<Name>RNN` as it is.
    cell.json    the spec (`CellSpec.to_json`).
    README.md    a model card: equations, canonical hash, origin, metrics, usage.
    weights.pt   the state dict of `<Name>RNN`, when `weights` is given.
    cell.png     the picture, when nas.cell.draw is available.
    model.pt, model.json, charlm.py, sample.py, evaluate.py
                 the whole trained character model in plain torch, when `lm` is given
                 (nas.export.lm: embedding, cell, decoder, vocabulary; text sampling; scoring).

The card also states how fast `<Name>RNN` runs against torch.nn.LSTM on this machine (measured at
export) and points to nas.compile.CellRNN for the fast path.

Both classes compile with `torch.jit.script` (deprecated in torch 2.13 with a DeprecationWarning, but
working) and the sequence layer exports with `torch.export.export`; tests/export/test_export.py checks both.

Safety (nas/export/codegen.py): the code is built from the op registry's templates (`render`), from
names of our own and from spec names that match `_SAFE_NAME`, renamed (a trailing _) away from
keywords, builtins and the module's own names. Option values reach the code only as `repr(float)` / `repr(bool)`. Anything else
raises `ExportError` before a file is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nas.cell.ops import OPS, is_user_op
from nas.cell.spec import INPUT, CellSpec
from nas.compile.plan import Plan, lower
from nas.export.codegen import ExportError, class_names, equations, generate_module, module_name
from nas.export.lm import LM_FILES, TrainedLM, measure_speed, write_lm
from nas.export.templates import lm_section, model_card, no_lm_section, speed_section

__all__ = ["ExportError", "export_cell", "generate_module"]

def _user_op_modules(spec: CellSpec) -> str:
    """The modules that register the user ops `spec` uses ("" when it uses built-in ops only)."""

    mods = sorted({OPS[n.op].fn.__module__ for n in spec.nodes if is_user_op(n.op)})
    return ", ".join(mods)


def export_cell(spec: CellSpec, out_dir: str | Path, name: str | None = None,
                weights: Mapping[str, torch.Tensor] | None = None, metrics: Mapping[str, Any] | None = None,
                origin: Mapping[str, Any] | None = None, overwrite: bool = False,
                lm: TrainedLM | str | None = None, speed: bool = True) -> Path:
    """Write the export folder of `spec` (see the module docstring) and return its path.

    name:    the module name (default: the spec's name, else "cell").
    weights: a CellRNN state dict; its `layers.<n>.` keys give the number of layers (default: lm's).
    metrics: {metric: value} for this cell, or {model: {metric: value}} for it and its baselines.
    origin:  where the cell comes from, e.g. {"study": ..., "trial": ..., "search space": ...}.
    lm:      the trained character model (nas.export.lm.find_trained_lm / trial_lm), or why there is
             none (a str, said in the card; None: a reason from whether `weights` were given).
    speed:   measure the plain-torch layer against torch.nn.LSTM for the card (a warm-up round, then
             up to 3 timed rounds while 2 s have not passed).
    """
    name = module_name(spec, name)
    source = generate_module(spec, name)
    needs = _user_op_modules(spec)
    if needs:  # the step code calls the user's op through nas: the folder is not standalone
        source = source.replace("Standalone, needs only torch;", f"Needs torch, nas-rnn and {needs};", 1)
    plan = lower(spec)
    if isinstance(lm, TrainedLM) and weights is None:
        weights = lm.rnn_weights()
    elif lm is not None and not isinstance(lm, (TrainedLM, str)):
        raise ExportError(f"export: lm must be a TrainedLM or a reason (str), got {type(lm).__name__}")
    state_dict, sizes = _check_weights(plan, weights) if weights is not None else (None, None)
    for what, value in (("metrics", metrics), ("origin", origin)):
        if value is not None and not isinstance(value, Mapping):
            raise ExportError(f"export: {what} must be a dict, got {type(value).__name__}")
    metrics, origin = metrics or {}, origin or {}
    nested = [isinstance(v, Mapping) for v in metrics.values()]
    if any(nested) and not all(nested):
        raise ExportError("export: metrics must be {metric: value} or {model: {metric: value}}, not a mix")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ExportError(f"export: {out} exists and is not an empty folder (overwrite=True replaces it)")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.py").write_text(source, encoding="utf-8")
    (out / "cell.json").write_text(spec.to_json() + "\n", encoding="utf-8")
    for stale in ("weights.pt", "cell.png", *LM_FILES):
        (out / stale).unlink(missing_ok=True)
    if state_dict is not None:
        torch.save(state_dict, out / "weights.pt")
    rnn = class_names(name)[1]
    sections = _sections(out, name, rnn, lm, state_dict is not None, sizes or (1, 128, 128), speed)
    card = model_card(name, spec.canonical_hash(), spec.state, rnn, equations(spec), sizes, metrics, origin,
                      sections)
    if needs:
        card = card.replace("; needs only torch", f"; needs torch, nas-rnn and {needs} (its user ops)", 1)
    try:
        from nas.cell.draw import draw_cell
    except ImportError:  # the picture is optional
        pass
    else:
        draw_cell(spec, out / "cell.png")
        card = card.replace("\n## Equations", f"\n![the {name} cell](cell.png)\n\n## Equations", 1)
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def _sections(out: Path, name: str, rnn: str, lm: TrainedLM | str | None, has_weights: bool,
              sizes: tuple[int, int, int], speed: bool) -> list[str]:
    """The card's "Trained model" section (writing the model's files when there is one) and its "Speed"."""
    if isinstance(lm, TrainedLM):
        sections = [lm_section(write_lm(out, name, rnn, lm))]
    else:
        default = "only its recurrent weights were given" if has_weights else "the cell did not come from a training run"
        sections = [no_lm_section(lm or default, has_weights)]
    if speed:
        sections.append(speed_section(rnn, measure_speed(out / f"{name}.py", rnn, sizes)))
    return sections


def _param_shapes(plan: Plan, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple]:
    """State dict names and shapes of CellRNN(spec, input_size, hidden_size, num_layers)."""
    n_bias = sum(1 for n in plan.spec.nodes if OPS[n.op].has_weights and n.option("bias"))
    shapes = {}
    for k in range(num_layers):
        for g in plan.groups:
            cols = input_size if g.source == INPUT and k == 0 else hidden_size
            shapes[f"layers.{k}.weight_{g.source}"] = (len(g.bias_rows) * hidden_size, cols)
        if n_bias:
            shapes[f"layers.{k}.bias"] = (n_bias * hidden_size,)
    return shapes


def _check_weights(plan: Plan, weights: Mapping[str, Any]) -> tuple[dict, tuple[int, int, int] | None]:
    """(the state dict to save, (num_layers, input_size, hidden_size)) if `weights` fit the cell; sizes
    are None for a cell without parameters."""
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ExportError("export: weights must be a CellRNN state dict of tensors")
    if not weights and not _param_shapes(plan, 1, 1, 1):
        return {}, None
    layers = [re.match(r"layers\.(\d+)\.", k) for k in weights]
    if not layers or not all(layers):
        raise ExportError("export: weights must be a CellRNN state dict (keys 'layers.<n>.<param>')")
    num_layers = 1 + max(int(m.group(1)) for m in layers)
    expected = _param_shapes(plan, 1, 1, num_layers)
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ExportError(f"export: weights do not fit the cell: missing keys {missing}, "
                          f"unexpected keys {unexpected}")
    first = next(iter(expected))
    hidden = weights[first].shape[0] // expected[first][0]
    inputs = weights["layers.0.weight_x"].shape[1] if plan.group(INPUT) else hidden
    for key, shape in _param_shapes(plan, inputs, hidden, num_layers).items():
        if tuple(weights[key].shape) != shape:
            raise ExportError(f"export: weights {key!r}: expected shape {shape} (hidden_size {hidden} from "
                              f"{first!r}), got {tuple(weights[key].shape)}")
    if plan.needs_raw_x and inputs != hidden:
        raise ExportError(f"export: the cell reads x elementwise, which needs input_size == hidden_size, "
                          f"got {inputs} and {hidden}")
    return {k: weights[k].detach().cpu().clone() for k in expected}, (num_layers, inputs, hidden)


