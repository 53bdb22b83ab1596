"""One search trial end to end: `nas.train.evaluate` of each cell under a trainer config, as a search
worker runs it (model build, training, intermediate and final validation), timed.

    python benchmarks/trial.py                                  # conf/trainer/search.yaml, CPU
    python benchmarks/trial.py --trainer gpu --steps 300 --cells lstm,darts_v2 --variants default,torch
                                                                # the GPU trainer, 300 steps

Reported per cell: chars/s of the optimizer steps (EvalResult.chars_per_sec), the trial's wall time
and its validation bpc. Variants: default (CPU: the C kernels; GPU: Triton kernels in CUDA graphs),
torch (the per-op torch code: trainer.backend=torch; on a GPU still in CUDA graphs), eager
(GPU: Triton kernels without graphs: trainer.cuda_graphs=off), pyloop (CPU: the C kernels with the time
loop in Python: NAS_C_LOOP=0, the one alias without a trainer option). The C kernels' probe runs first, as a worker runs it once before its trials;
each cell's compilation is in its trial.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.cell import known_cell
from nas.compile.backends.c.backend import c_works
from nas.config import TrainConfig
from nas.train import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", default="search", help="a config of conf/trainer/ (default: %(default)s)")
    p.add_argument("--steps", type=int, help="override the trainer's steps")
    p.add_argument("--cells", default="lstm,darts_v2")
    p.add_argument("--variants", default="default",
                   help="comma separated: default, torch, eager, pyloop (CPU: the time loop in Python)")
    p.add_argument("--threads", type=int, help="torch CPU threads (a search worker runs 1)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    fields = yaml.safe_load((ROOT / "conf" / "trainer" / f"{args.trainer}.yaml").read_text())
    if args.steps:
        fields["steps"] = args.steps
    cfg = TrainConfig(**{**fields, "progress": False, "sample_chars": 0})
    if args.threads:
        torch.set_num_threads(args.threads)
    # A search worker probes its C kernels once per process, before its first trial, not per trial;
    # and its first trial loads the corpus: both before the timed trials here (a 2-step rnn_tanh trial).
    c_works(torch.float32, loop=True)
    if "pyloop" in args.variants.split(","):
        c_works(torch.float32)  # (the kernels' own probe, which the C loop's passing does not run)
    evaluate(known_cell("rnn_tanh"), TrainConfig(**{**fields, "steps": 2, "eval_every": 1, "eval_chars": 1000,
                                                     "progress": False, "sample_chars": 0}), seed=0)
    rows = []
    for cell in args.cells.split(","):
        for name in args.variants.split(","):
            os.environ["NAS_C_LOOP"] = "0" if name == "pyloop" else "1"
            variant = replace(cfg, backend="torch" if name == "torch" else "auto",
                              cuda_graphs="off" if name == "eager" else "auto")
            start = time.perf_counter()
            res = evaluate(known_cell(cell), variant, seed=0)
            wall = time.perf_counter() - start
            rows.append({"cell": cell, "variant": name, "device": res.device,
                         "chars_per_sec": res.chars_per_sec, "wall_s": round(wall, 1),
                         "val_bpc": res.val_bpc, "divergence": res.divergence})
            print(f"{cell:10s} {name:8s} {res.device:6s} {res.chars_per_sec:12,.0f} chars/s "
                  f"wall {wall:6.1f} s  val bpc {res.val_bpc}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = {"trainer": args.trainer, "config": fields, "gpu": device, "threads": torch.get_num_threads(),
           "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
