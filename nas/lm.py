"""The character-level language model around a cell, its size arithmetic and text sampling.

    ids (T, B) -> Embedding(V, E) -> CellRNN(spec, E, H, L) -> dropout -> Linear(H, V) -> logits

E = H by default (cells like MUT1 apply elementwise ops to their input, which needs E = H), and the
decoder shares the embedding matrix when E = H ("weight tying", Press & Wolf 2017; Inan et al. 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nas.cell import CellRNN, CellSpec
from nas.cell.lower import lower
from nas.cell.ops import OPS
from nas.cell.spec import INPUT


class CharLM(nn.Module):
    def __init__(self, spec: CellSpec, vocab_size: int, hidden_size: int, num_layers: int = 1,
                 embedding_size: int | None = None, dropout: float = 0.0, tie_weights: bool = True):
        super().__init__()
        E = embedding_size or hidden_size
        self.spec, self.vocab_size, self.hidden_size, self.embedding_size = spec, vocab_size, hidden_size, E
        self.embedding = nn.Embedding(vocab_size, E)
        self.rnn = CellRNN(spec, E, hidden_size, num_layers=num_layers, dropout=dropout)
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
    H, E = hidden_size, embedding_size or hidden_size
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
