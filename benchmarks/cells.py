"""Training-step time of compiled cells against torch.nn.LSTM / GRU, as same-run ratios.

One step = forward over a (T, B, H) sequence + a scalar loss + backward + Adam update. Every model
is timed interleaved in the same process (round-robin repeats), and the median of each is reported,
so the ratios are robust to the machine's drift.

    python benchmarks/cells.py                       # batch 32, 64 steps, hidden 256
    python benchmarks/cells.py --batch 128 --steps 256 --hidden 512
    python benchmarks/cells.py --json runs/bench/cells.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.cell import CellRNN, known_cell  # noqa: E402


def make_models(hidden: int, cells: list[str], device: str) -> dict[str, torch.nn.Module]:
    models: dict[str, torch.nn.Module] = {
        "torch.nn.LSTM": torch.nn.LSTM(hidden, hidden),
        "torch.nn.GRU": torch.nn.GRU(hidden, hidden),
    }
    for name in cells:
        models[f"CellRNN({name})"] = CellRNN(known_cell(name), hidden, hidden)
    return {k: m.to(device) for k, m in models.items()}


def time_steps(models: dict[str, torch.nn.Module], batch: int, steps: int, hidden: int,
               repeats: int, device: str) -> dict[str, list[float]]:
    x = torch.randn(steps, batch, hidden, device=device)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}

    def one(name: str) -> None:
        out, _ = models[name](x)
        loss = out.float().pow(2).mean()
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:  # warm-up: allocator, codegen caches, BLAS packing
        one(name)
    for _ in range(repeats):
        for name in models:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            one(name)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cells", default="lstm,gru,nas_cell,darts_v2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    cells = args.cells.split(",")
    start = time.perf_counter()
    models = make_models(args.hidden, cells, args.device)
    prep = time.perf_counter() - start
    times = time_steps(models, args.batch, args.steps, args.hidden, args.repeats, args.device)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU"}
    rows = []
    for name, t in med.items():
        ref = None
        if name.startswith("CellRNN("):
            cell = name[len("CellRNN("):-1]
            ref = base.get(cell, "CellRNN(lstm)")
        ratio = t / med[ref] if ref in med else None
        rows.append({"model": name, "median_ms": round(t * 1e3, 2), "vs": ref,
                     "ratio": None if ratio is None else round(ratio, 2)})
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "device": args.device, "torch": torch.__version__, "batch": args.batch,
              "steps": args.steps, "hidden": args.hidden, "repeats": args.repeats,
              "build_seconds_all_models": round(prep, 3), "rows": rows}
    print(f"training step (fwd+bwd+Adam), batch {args.batch}, {args.steps} steps, hidden "
          f"{args.hidden}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':24s} {'median ms':>10s}  ratio")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x vs {r['vs']}"
        print(f"{r['model']:24s} {r['median_ms']:10.2f}  {ratio}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
