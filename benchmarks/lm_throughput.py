"""Training throughput of the whole char-LM (embedding -> RNN -> decoder, TBPTT, clipping, Adam) with
CellRNN(lstm) against the same model with torch.nn.LSTM at equal size, as a same-run ratio.

Both models train on the same Tiny Shakespeare batches, interleaved (one chunk each, in turn), so drift
of the machine hits both alike; the medians of chars/s are compared.

    python benchmarks/lm_throughput.py                 # hidden 256, batch 32, seq 64, 40 steps each
    python benchmarks/lm_throughput.py --hidden 512 --threads 1
    python benchmarks/lm_throughput.py --device cuda --hidden 1024 --batch 128 --seq 150 --bf16 \
        --cells lstm,darts_v2                          # the GPU trainer's sizes (conf/trainer/gpu.yaml)

The first cell is compared with torch.nn.LSTM; every cell's model is timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def step(model, opt, inp, tgt, state, bf16=False):
    if state is not None:
        state = tuple(s.detach() for s in state)
    with torch.autocast(inp.device.type, torch.bfloat16, enabled=bf16):
        logits, state = model(inp, state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--cells", default="lstm", help="cells to time (comma separated); the first is the ratio's")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as the GPU trainer runs)")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls (as the GPU trainer runs)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    corpus = load_corpus()
    torch.manual_seed(0)
    cells = [c for c in args.cells.split(",") if c]
    first = f"CharLM(CellRNN({cells[0]}))"
    models = {f"CharLM(CellRNN({c}))": CharLM(known_cell(c), corpus.vocab_size, args.hidden) for c in cells}
    models["CharLM(torch.nn.LSTM)"] = TorchLSTMLM(corpus.vocab_size, args.hidden)
    models = {k: m.to(args.device) for k, m in models.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    states = dict.fromkeys(models)
    rates: dict[str, list[float]] = {k: [] for k in models}
    chunks = iterate_chunks(batchify(corpus.train, args.batch, args.seq), args.seq)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    for i, (inp, tgt) in zip(range(args.steps + 3), chunks):
        inp, tgt = inp.to(args.device), tgt.to(args.device)
        for name, model in models.items():
            sync()
            t0 = time.perf_counter()
            states[name] = step(model, opts[name], inp, tgt, states[name], args.bf16)
            sync()
            if i >= 3:  # warm-up steps (and CUDA graph capture) are not timed
                rates[name].append(tgt.numel() / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med[first] / med["CharLM(torch.nn.LSTM)"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"hidden": args.hidden, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "device": device, "bf16": args.bf16, "tf32": args.tf32, "threads": torch.get_num_threads(),
              "chars_per_sec": {k: round(v) for k, v in med.items()},
              "throughput_ratio_cellrnn_vs_torch": round(ratio, 3)}
    for k, v in med.items():
        print(f"{k:28s} {v:12,.0f} chars/s")
    print(f"CellRNN({cells[0]}) model trains at {ratio:.2f}x the chars/s of the torch.nn.LSTM model "
          f"(time ratio {1 / ratio:.2f}x) on {device}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
