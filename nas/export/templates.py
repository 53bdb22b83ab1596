"""The text templates of an export folder: the skeleton of the generated module and the model card.

Kept apart from nas/export/codegen.py (the generator) so that each reads top to bottom; `MODULE` is filled
by `nas.export.codegen.generate_module` with names and code it has already checked.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

MODULE = string.Template('''\
"""$name: a recurrent cell exported by nas-rnn (canonical hash $hash).

Standalone, needs only torch; both classes compile with torch.jit.script.
    $Cell: one step, shaped like torch.nn.LSTMCell.
    $RNN: sequences through `num_layers` stacked cells, shaped like torch.nn.LSTM, with the
        state_dict names and shapes of nas.compile.CellRNN (`layers.0.weight_x`, ...).

The state is $state_doc; the first vector is the output.
One step, where W_s[n] is the block of rows of `weight_s` that node n applies to source s, and b[n]
its block of `bias`:

$equations
"""

$imports
from torch import Tensor, nn
from torch.nn import functional as F

State = $state_type


class $Cell(nn.Module):
    """One step of the $name cell: forward(x: (B, input_size), state=None) -> new state $state_doc.

    Each state tensor is (B, hidden_size); a missing state is zeros. Parameters:
$param_doc
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
$param_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights uniform in ±1/sqrt(hidden_size), as in torch.nn.LSTM; biases to their node's init."""
$param_reset

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def forward(self, x: Tensor, state: State | None = None) -> State:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"$Cell: expected input of shape (B, {self.input_size}), "
                             f"got {list(x.shape)}")
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = $zeros
        if len(state) != $K:
            raise ValueError(f"$Cell: expected the state $state_doc, got {len(state)} tensors")
        for v in state:
            if list(v.shape) != [x.shape[0], self.hidden_size]:
                raise ValueError(f"$Cell: expected state tensors of shape ({x.shape[0]}, "
                                 f"{self.hidden_size}), got {list(v.shape)}")
        return self.step($cell_args)

    def step(self, $step_params) -> State:
        """$step_doc"""
$step_body


class $RNN(nn.Module):
    """The $name cell over sequences, shaped like torch.nn.LSTM.

    forward(input: (T, B, input_size), or (B, T, input_size) if batch_first, state=None)
        -> (output: (T, B, hidden_size), or (B, T, hidden_size) if batch_first,
            state: $state_doc, each (num_layers, B, hidden_size)).
    Dropout (if > 0) is applied to the outputs of every layer but the last, as in torch.nn.LSTM.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 batch_first: bool = False) -> None:
        super().__init__()
        if num_layers < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"$RNN: expected num_layers >= 1 and 0 <= dropout < 1, "
                             f"got num_layers={num_layers}, dropout={dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.batch_first = batch_first
        self.layers = nn.ModuleList(
            [$Cell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)])

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")

    def forward(self, input: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x = input.transpose(0, 1) if self.batch_first else input
        if x.dim() != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"$RNN: expected input with {self.input_size} features in 3 dimensions, "
                             f"got {list(input.shape)}")
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[1], self.hidden_size)
            state = $zeros
        if len(state) != $K:
            raise ValueError(f"$RNN: expected the state $state_doc, got {len(state)} tensors")
        for v in state:
            if list(v.shape) != [self.num_layers, x.shape[1], self.hidden_size]:
                raise ValueError(f"$RNN: expected state tensors of shape ({self.num_layers}, "
                                 f"{x.shape[1]}, {self.hidden_size}), got {list(v.shape)}")
        finals: list[State] = []
        for i, layer in enumerate(self.layers):
            s = $layer_state
$seq_products
            outputs: list[Tensor] = []
            for t in range(x.shape[0]):
                s = layer.step($seq_args)
                outputs.append(s[0])
            x = torch.stack(outputs)
            finals.append(s)
            if self.dropout > 0.0 and self.training and i < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        output = x.transpose(0, 1) if self.batch_first else x
        return output, $finals
''')


# -- the model card -----------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A value as one line of markdown table text."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _metrics_table(metrics: Mapping[str, Any], name: str) -> list[str]:
    """{metric: value} (this cell) or {model: {metric: value}} (this cell and baselines) as a table."""
    nested = [isinstance(v, Mapping) for v in metrics.values()]
    rows = dict(metrics) if all(nested) else {name: metrics}
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    lines = ["| model | " + " | ".join(map(_text, columns)) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, row in rows.items():
        cells = [_text(row[c]) if c in row else "" for c in columns]
        lines.append(f"| {_text(model)} | " + " | ".join(cells) + " |")
    return lines


def model_card(name: str, cell_hash: str, state: tuple[str, ...], rnn: str, equations: list[str],
               sizes: tuple[int, int, int] | None, metrics: Mapping[str, Any], origin: Mapping[str, Any],
               sections: Sequence[str] = ()) -> str:
    """The README.md of an export folder (metrics already checked by the exporter); `sections` (markdown,
    e.g. lm_section and speed_section) come after the metrics."""
    layers, inputs, hidden = sizes or (1, 128, 128)
    model = f"{rnn}(input_size={inputs}, hidden_size={hidden}, num_layers={layers})"
    lines = [f"# {name}", "", "A recurrent cell from nas-rnn, exported as standalone PyTorch code.", "",
             f"- canonical hash: `{cell_hash}`",
             f"- `{name}.py`: the cell and the sequence layer `{rnn}`; needs only torch",
             "- `cell.json`: the cell spec (nas-rnn's CellSpec JSON)",
             *([f"- `weights.pt`: the state dict of `{model}`"] if sizes else []), "",
             "## Equations", "", "```text", *equations, "```", ""]
    if origin:
        lines += ["## Origin", "", *(f"- {_text(k)}: {_text(v)}" for k, v in origin.items()), ""]
    if metrics:
        lines += ["## Metrics", "", *_metrics_table(metrics, name), ""]
    lines += [line for section in sections for line in (section.rstrip("\n"), "")]
    lines += ["## Usage", "", "With this folder on the Python path:", "", "```python", "import torch", "",
              f"from {name} import {rnn}", "", f"model = {model}",
              *(['model.load_state_dict(torch.load("weights.pt", weights_only=True))'] if sizes else []),
              f"output, state = model(torch.randn(35, 8, {inputs}))  # input: (T, B, input_size)",
              f"# output: (35, 8, {hidden}); state: ({', '.join(state)}), each ({layers}, 8, {hidden})",
              "```", "", "A state dict saved from nas.compile.CellRNN with the same sizes loads as it is.", ""]
    return "\n".join(lines)


_FORMATS = {
    "chars": "UTF-8 text, one symbol per character",
    "bytes": "one symbol per byte",
    "spaced": "characters separated by spaces, one sentence a line: each non-space character is a symbol, "
              "each line ends with one end-of-line symbol, the separator spaces are not symbols "
              "(the published char-PTB protocol)",
}


def lm_section(meta: Mapping[str, Any]) -> str:
    """The card's "Trained model" section, from model.json's content (nas.export.lm.write_lm)."""
    s, p, r = meta["sizes"], meta["protocol"], meta["reported"]
    scores = ", ".join(f"{k.replace('_', ' ')} **{r[k]:.4f}**" for k in ("val_bpc", "test_bpc")
                       if r.get(k) is not None) or "no score"
    capped = f", at most {p['max_chars']:,} symbols a split" if p.get("max_chars") else ""
    lines = ["## Trained model", "",
             ("The whole character-level language model the cell was trained in, in plain torch (needs only "
             f"torch, not nas-rnn): `Embedding({s['vocab_size']}, {s['embedding_size']})` -> "
             f"`{meta['rnn_class']}({s['embedding_size']}, {s['hidden_size']}, num_layers={s['num_layers']})` "
             f"-> `Linear({s['hidden_size']}, {s['vocab_size']})`"
             f"{', the decoder tied to the embedding' if s['tied'] else ''}."), "",
             "- `model.pt`: the state dict of `charlm.CharLM` (embedding, cell, decoder)",
             "- `model.json`: the vocabulary, the sizes, the scoring protocol and the reported scores",
             "- `charlm.py`: `load()` -> (model, vocabulary, model.json); `bpc()`, the scoring protocol",
             "- `sample.py`: generates text", "- `evaluate.py`: scores a text file in bits per symbol", "",
             (f"Reported: {scores} bits per symbol on corpus `{_text(r.get('corpus'))}` (sha256 "
             f"`{_text(r.get('corpus_sha256'))}`), after {r.get('steps')} steps (seed {r.get('seed')}, "
             f"{_text(r.get('device'))}); {_text(r.get('protocol'))}."), "",
             "```bash", "python sample.py --chars 500 --temperature 0.8 --prime 'ROMEO:'",
             f"python evaluate.py path/to/{_text(r.get('corpus'))}.txt --split val   # a one-file corpus",
             "python evaluate.py path/to/valid.txt                  # a corpus given as a folder of splits",
             "```", "",
             ("What `evaluate.py` assumes, as nas-rnn scores (change it with its options): the file is read as "
             f"`{meta['text_format']}` ({_FORMATS.get(meta['text_format'], meta['text_format'])}); "
             "`--split val` / `test` take the symbols from 90% to 95% / 95% to 100% of the file, as nas-rnn "
             "cuts a one-file corpus (default: the whole file); symbols outside the vocabulary are `<unk>` "
             f"(id 0), as in training; segments of {p['segment']} symbols, each from a zero state after a "
             f"burn-in of the {p['burn_in']} symbols before it (read, not scored), every symbol but the first "
             f"scored once{capped}; bits = nats / ln 2. On the run's corpus it reproduces the reported score "
             "up to float rounding.")]
    if r.get("bf16"):
        lines += ["", ("The reported scores were computed under bf16 autocast on the GPU; `evaluate.py` computes "
                  "in float32, so expect differences in the third decimal.")]
    return "\n".join(lines)


def no_lm_section(reason: str, has_weights: bool) -> str:
    """The card's "Trained model" section of an export without one."""
    what = "the cell module and its trained recurrent weights" if has_weights else "the cell module only"
    return "\n".join(["## Trained model", "", (f"**No trained model is included**: {reason}. This folder holds "
                      f"{what}: no embedding, decoder or vocabulary, so no `sample.py` or `evaluate.py`. "
                      "Export a trained run for those (`nas-export study=NAME`, or `nas-export "
                      "cell=runs/train/<run folder>`).")])


def speed_section(rnn: str, speed: Mapping[str, Any]) -> str:
    """The card's "Speed" section, from nas.export.lm.measure_speed."""
    layers, inputs, hidden = speed["sizes"]
    n = speed.get("rounds", 1)
    rounds = f"best of {n} round{'s' * (n > 1)} after a warm-up" if n else "one round, warm-up costs included"
    rows = [(f"`{rnn}` (this folder)", speed["plain_forward_ms"], speed["plain_train_ms"]),
            ("`torch.nn.LSTM`", speed["lstm_forward_ms"], speed["lstm_train_ms"])]
    return "\n".join([
        "## Speed", "",
        (f"`{rnn}` is plain torch: a Python loop over time steps, a few small kernels a step. Measured when "
        f"this folder was exported, on {speed['machine']}, one CPU thread (its CPU time; {rounds}), "
        f"{speed['steps']} steps x batch {speed['batch']}, input {inputs}, hidden {hidden}, {layers} layer(s):"),
        "",
        "| layer | forward, no grad (ms) | forward + backward (ms) |", "|---|---|---|",
        *(f"| {name} | {fwd:.2f} | {train:.2f} |" for name, fwd, train in rows),
        f"| ratio | {speed['forward_ratio']:.1f}x | {speed['train_ratio']:.1f}x |", "",
        *([(f"The machine was busy with other work while measuring (load {speed['load']:.1f} per core): the ratios "
           "are rough; "
           "measure on your own machine before relying on them."), ""] if (speed.get("load") or 0) > 1 else []),
        ("For training or fast inference use nas-rnn's `nas.compile.CellRNN`, the same cell with fused kernels: "
        "`CellRNN(CellSpec.from_file(\"cell.json\"), input_size, hidden_size, num_layers)` (from `nas.cell`); "
        "`weights.pt` loads into it as it is.")])
