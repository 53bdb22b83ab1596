"""Where one training step of a cell spends its time: torch.profiler's table of the step's ops and
kernels (CUDA kernel time on a GPU, CPU time otherwise), after warm-up (CUDA graphs captured).

    python benchmarks/profile_step.py --cell darts_v2                       # CPU, small size
    python benchmarks/profile_step.py --cell darts_v2 --device cuda --size 128x256x512 --no-graphs

With CUDA graphs on, the profiler sees one graph launch per sequence; `--no-graphs` shows the
kernels one by one (the same kernels, launched eagerly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.cell import known_cell
from nas.compile import CellRNN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="32x64x256", help="batch x steps x hidden")
    p.add_argument("--no-graphs", action="store_true", help="GPU: launch the kernels eagerly")
    p.add_argument("--torch-kernels", action="store_true", help="GPU: the torch code, not Triton's")
    p.add_argument("--steps", type=int, default=5, help="profiled training steps")
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    batch, steps, hidden = map(int, args.size.split("x"))
    model = CellRNN(known_cell(args.cell), hidden, hidden, backend="torch" if args.torch_kernels else "auto",
                    cuda_graphs="off" if args.no_graphs else "auto").to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(steps, batch, hidden, device=args.device)

    def step() -> None:
        out, _ = model(x)
        opt.zero_grad(set_to_none=True)
        out.pow(2).mean().backward()
        opt.step()

    for _ in range(3):
        step()
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(f"{args.cell}, batch {batch}, {steps} steps, hidden {hidden}, {args.device}, "
          f"{args.steps} training steps profiled")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
