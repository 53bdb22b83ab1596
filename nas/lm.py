"""The character-level language model around a cell, its size arithmetic and text sampling.

    ids (T, B) -> Embedding(V, E) -> CellRNN(spec, E, H, L) -> dropout -> Linear(H, V) -> logits

E = H by default (cells like MUT1 apply elementwise ops to their input, which needs E = H), and the
decoder shares the embedding matrix when E = H ("weight tying", Press & Wolf 2017; Inan et al. 2017).

Scores (`split_bpc`): bits per character over a split, read as consecutive segments of a fixed
length, each from a zero state, so the number depends on the weights and the segment length only,
never on how many segments run at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from nas.cell import CellSpec
from nas.cell.ops import OPS
from nas.cell.spec import INPUT
from nas.compile import CellRNN
from nas.compile.plan import lower


class CharLM(nn.Module):
    def __init__(self, spec: CellSpec, vocab_size: int, hidden_size: int, num_layers: int = 1,
                 embedding_size: int | None = None, dropout: float = 0.0, tie_weights: bool = True,
                 fused: bool = True, backend: str = "auto", cuda_graphs: str = "auto"):
        super().__init__()
        E = hidden_size if embedding_size is None else embedding_size
        if E < 1 or hidden_size < 1:
            raise ValueError(f"CharLM: expected hidden_size and embedding_size >= 1 (None: hidden_size), "
                             f"got {hidden_size} and {embedding_size}")
        self.spec, self.vocab_size, self.hidden_size, self.embedding_size = spec, vocab_size, hidden_size, E
        self.embedding = nn.Embedding(vocab_size, E)
        # fused=False: the plain torch step code (no kernel generation), as screening wants;
        # backend / cuda_graphs: the fast path's code (nas.compile.backends.policy)
        self.rnn = CellRNN(spec, E, hidden_size, num_layers=num_layers, dropout=dropout, fused=fused,
                           backend=backend, cuda_graphs=cuda_graphs)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.tied = tie_weights and E == hidden_size
        if self.tied:
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, ids: Tensor, state=None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """ids: (T, B) int64 -> (logits (T, B, V), final state)."""
        out, state = self.rnn(self.drop(self.embedding(ids)), state)
        return self.decoder(self.drop(out)), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are one Parameter: counted once


def count_params(spec: CellSpec, vocab_size: int, hidden_size: int, num_layers: int = 1,
                 embedding_size: int | None = None, tie_weights: bool = True) -> int:
    """CharLM(...).num_params() without building the model (it is called ~12 times per cell when
    matching a parameter budget)."""
    H, E = hidden_size, hidden_size if embedding_size is None else embedding_size
    plan = lower(spec)
    n_bias = sum(1 for n in spec.nodes if OPS[n.op].has_weights and n.option("bias"))
    rnn = 0
    for layer in range(num_layers):
        inp = E if layer == 0 else H
        for g in plan.groups:
            rnn += len(g.bias_rows) * H * (inp if g.source == INPUT else H)
        rnn += n_bias * H
    tied = tie_weights and E == H
    return vocab_size * E + rnn + (0 if tied else vocab_size * H) + vocab_size


def match_hidden_size(spec: CellSpec, vocab_size: int, param_budget: int, num_layers: int = 1,
                      tie_weights: bool = True, lo: int = 4, hi: int = 8192) -> int:
    """The hidden size whose model (embedding size = hidden size) has closest to `param_budget`
    parameters. Parameter count grows monotonically with H, so a bisection finds the crossing."""
    def size(h: int) -> int:
        return count_params(spec, vocab_size, h, num_layers, None, tie_weights)

    if param_budget < size(lo):
        raise ValueError(f"parameter budget {param_budget} is below the smallest model of cell "
                         f"{spec.name or spec.canonical_hash()} ({size(lo)} parameters at hidden size {lo})")
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= param_budget else (lo, mid)
    return min((lo, hi), key=lambda h: abs(size(h) - param_budget))


@torch.no_grad()
def sample(model: CharLM, encode, decode, length: int = 300, temperature: float = 0.8,
           prime: str = "\n", seed: int = 0) -> str:
    """Generate `length` characters after `prime`, sampling from softmax(logits / temperature)."""
    if temperature <= 0:
        raise ValueError(f"sample: temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.as_tensor(encode(prime), dtype=torch.long, device=device).view(-1, 1)
    logits, state = model(ids)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0].float().cpu() / temperature, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    model.train(was_training)
    return decode(out)


VOCAB_FILE = "vocab.json"  # next to a run's weights.pt: what its embedding rows mean


def save_vocab(out_dir: str | Path, symbols: Sequence[str], text_format: str) -> Path:
    """Write `out_dir/vocab.json`: the symbol of each id (Corpus.symbols, id 0 "<unk>") and how the
    corpus text became symbols (Corpus.format), so that a saved CharLM can be used without its corpus."""
    path = Path(out_dir) / VOCAB_FILE
    path.write_text(json.dumps({"symbols": list(symbols), "format": text_format}) + "\n", encoding="utf-8")
    return path


def load_vocab(path: str | Path) -> tuple[tuple[str, ...], str]:
    """(symbols, text format) of a vocab.json written by save_vocab; ValueError naming the file if it is
    not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        symbols, text_format = tuple(data["symbols"]), data["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected a vocab.json ({{'symbols': [...], 'format': ...}}), got {e}") from None
    if not all(isinstance(s, str) for s in symbols) or not isinstance(text_format, str):
        raise ValueError(f"{path}: expected a vocab.json whose symbols and format are strings")
    return symbols, text_format


LN2 = math.log(2.0)


def eval_segments(n_chars: int, segment: int, max_chars: int | None = None) -> list[tuple[int, int]]:
    """The (start, length) segments that score a split of `n_chars` ids.

    Segment k reads ids[start : start + length] and predicts ids[start + 1 : start + length + 1];
    together the segments predict ids[1:], each character once (the first has no context). With
    `max_chars` below n_chars - 1: ceil(max_chars / segment) whole segments spread evenly over the
    split, one in the middle of each of that many equal parts (all of them if there are not that
    many)."""
    targets = n_chars - 1
    if targets < 1 or segment < 1:
        raise ValueError(f"eval_segments: expected >= 2 characters and segment >= 1, got "
                         f"{n_chars} characters, segment {segment}")
    whole = targets // segment
    cuts = [(k * segment, segment) for k in range(whole)]
    if targets % segment:
        cuts.append((whole * segment, targets % segment))
    if max_chars is None or max_chars >= targets:
        return cuts
    k = -(-max_chars // segment)
    if k >= whole:
        return cuts
    return [cuts[(2 * i + 1) * whole // (2 * k)] for i in range(k)]  # the middles of k equal parts


@torch.no_grad()
def split_bpc(model: CharLM, ids, segment: int, batch_size: int, device: torch.device,
              max_chars: int | None = None, autocast: bool = False,
              progress: Callable[[int, int], None] | None = None, burn_in: int = 0) -> float:
    """Bits per character of `model` over `ids` (a split), scored as `eval_segments(len(ids),
    segment, max_chars)`, `batch_size` segments at once.

    State carry: each segment is read from a zero state, after a burn-in of the `burn_in`
    characters before it (fewer for the first ones of the split: none for the first), read but not
    scored. No state crosses from one segment to another, so the result does not depend on
    `batch_size` (up to float rounding: per-character losses are summed in float64), and no state
    is carried further than burn_in + segment characters. The burn-in keeps a segment's score from
    hanging on its opening character: read from a zero state, a segment opening with "?" cost an
    undertrained LSTM 7.5 bits a character over all its 2048, one character of burn-in 4.6.
    `progress(done, total)` (characters) is called after each batch."""
    cuts = eval_segments(len(ids), segment, max_chars)
    total_chars = sum(n for _, n in cuts)
    was_training = model.training
    model.eval()
    loss, done = 0.0, 0
    # One batch holds segments of one (burn-in, length): all but the split's first and last ones.
    keyed = [(min(burn_in, start), start, n) for start, n in cuts]
    groups = [[c for c in keyed if (c[0], c[2]) == key] for key in dict.fromkeys((c[0], c[2]) for c in keyed)]
    with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        for group in groups:
            pre, length = group[0][0], group[0][2]
            for i in range(0, len(group), batch_size):
                begins = np.array([start - pre for _, start, _ in group[i:i + batch_size]])
                window = np.asarray(ids)[begins[:, None] + np.arange(pre + length + 1)]
                seq = torch.from_numpy(window.astype(np.int64)).t().contiguous().to(device)
                logits, _ = model(seq[:-1])
                per_char = nn.functional.cross_entropy(logits[pre:].float().flatten(0, 1),
                                                       seq[pre + 1:].flatten(), reduction="none")
                loss += per_char.double().sum().item()
                done += per_char.numel()
                if progress is not None:
                    progress(done, total_chars)
    model.train(was_training)
    return loss / done / LN2
