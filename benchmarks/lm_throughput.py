"""Training throughput of the whole char-LM (embedding -> RNN -> decoder, TBPTT, clipping, Adam) with
CellRNN(lstm) against the same model with torch.nn.LSTM at equal size, as a same-run ratio.

Both models train on the same Tiny Shakespeare batches, interleaved (one chunk each, in turn), so drift
of the machine hits both alike; the medians of chars/s are compared.

    python benchmarks/lm_throughput.py                 # hidden 256, batch 32, seq 64, 40 steps each
    python benchmarks/lm_throughput.py --hidden 512 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from nas.cell import known_cell
from nas.data import batchify, iterate_chunks, load_corpus
from nas.lm import CharLM


class TorchLSTMLM(nn.Module):
    """CharLM's architecture around torch.nn.LSTM (the reference)."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden)
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = self.embedding.weight

    def forward(self, ids, state=None):
        out, state = self.rnn(self.embedding(ids), state)
        return self.decoder(out), state


def step(model, opt, inp, tgt, state):
    if state is not None:
        state = tuple(s.detach() for s in state)
    logits, state = model(inp, state)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus()
    torch.manual_seed(0)
    models = {"CharLM(CellRNN(lstm))": CharLM(known_cell("lstm"), corpus.vocab_size, args.hidden),
              "CharLM(torch.nn.LSTM)": TorchLSTMLM(corpus.vocab_size, args.hidden)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    states = dict.fromkeys(models)
    rates: dict[str, list[float]] = {k: [] for k in models}
    chunks = iterate_chunks(batchify(corpus.train, args.batch, args.seq), args.seq)
    for i, (inp, tgt) in zip(range(args.steps + 3), chunks):
        for name, model in models.items():
            t0 = time.perf_counter()
            states[name] = step(model, opts[name], inp, tgt, states[name])
            if i >= 3:  # warm-up steps are not timed
                rates[name].append(tgt.numel() / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["CharLM(CellRNN(lstm))"] / med["CharLM(torch.nn.LSTM)"]
    result = {"hidden": args.hidden, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "threads": torch.get_num_threads(), "chars_per_sec": {k: round(v) for k, v in med.items()},
              "throughput_ratio_cellrnn_vs_torch": round(ratio, 3)}
    for k, v in med.items():
        print(f"{k:24s} {v:10,.0f} chars/s")
    print(f"CellRNN(lstm) model trains at {ratio:.2f}x the chars/s of the torch.nn.LSTM model "
          f"(time ratio {1 / ratio:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
