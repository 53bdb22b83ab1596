"""Training-step time and memory of compiled cells against torch.nn.LSTM / GRU, as same-run ratios.

One step = forward over a (T, B, I=H) sequence + a scalar loss + backward + Adam update. Within one
size, every model is timed interleaved in the same process (rounds of repeats, each in a new random
order, after warm-up), and the median of each is reported, so the ratios are robust to the machine's
drift. Ratios: CellRNN(lstm) against torch.nn.LSTM, CellRNN(gru) against torch.nn.GRU, every other
cell against CellRNN(lstm).

    python benchmarks/cells.py                          # both sizes, CPU (and CUDA when present)
    python benchmarks/cells.py --quick                  # small size, few repeats: a smoke run
    python benchmarks/cells.py --reference              # also the reference path (fused=False)
    python benchmarks/cells.py --threads 1              # as a search worker runs
    python benchmarks/cells.py --floor                  # CPU: also each cell's floor (see below)
    python benchmarks/cells.py --json runs/bench/cells.json
    python benchmarks/cells.py --device cuda --eager --graph-cells benchmarks/results/cpu_small_2threads.json
                                 # GPU: also without CUDA graphs; the CPU runs' graph cells (no optuna)

Columns:
    median ms   wall-clock time of one training step (median over repeats).
    saved MiB   bytes of the tensors autograd keeps for backward (unique storages, counted with
                torch.autograd.graph.saved_tensors_hooks during the forward). Under CUDA graphs
                a call's saved values live in the graph's static buffers: not counted here,
                counted in peak MiB.
    peak MiB    CPU: the highest total of tensor bytes allocated during one step and not yet
                freed, above the level before it (torch.profiler memory timeline: every
                allocation and free of the step; parameters and optimizer state allocated before
                the step are not counted; the C code's buffer pool is emptied first, so its
                buffers count, although between steps the pool keeps them). CUDA: the device memory reserved for the model at the
                peak of a step (caching allocator emptied before its warm-up and after it), above
                its parameters, gradients and Adam state: the step's tensors and what the model
                holds between steps (CUDA graphs' static buffers and memory pools). Reserved
                memory comes in segments of 2 MiB and up, so small numbers are coarse.
    prep ms     time to build the cell: lowering, code generation and compilation of the step and
                whole-sequence code (caches cleared first; it is paid once per cell and process).
    first ms    the first training step (on a GPU: Triton compiling the cell's kernels, unless
                its on-disk cache has them, and cuBLAS warming up).

--floor (CPU) adds each cell with its stage kernels compiled to store zeros and compute nothing:
the products, copies, time loop, x products, weight gradients and Adam of the real step, without
its elementwise arithmetic. No kernel can make the cell faster than that row (its numbers are
zeros: for timing only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.cell import CellSpec, known_cell
from nas.compile import CellRNN
from nas.compile import fast_path as function
from nas.compile import modules as cell_compile
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.backend import C, build_c_program, c_program, c_works
from nas.compile.backends.c.pool import POOL
from nas.compile.backends.policy import DEFAULT
from nas.compile.backends.triton import gpu_program
from nas.compile.sequence.program import program

SIZES = ((32, 64, 256), (128, 256, 512))  # (batch, steps, hidden)
BASELINE = {"lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU"}


def graph_cells(count: int, seed: int, min_live: int = 8) -> dict[str, CellSpec]:
    """`count` cells of the `graph` search space (seeded random sampling) with at least `min_live`
    live nodes, two of them linear: cells like those a search trains."""
    import optuna

    from nas.search_spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space("graph", min_nodes=12, max_nodes=16)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    cells: dict[str, CellSpec] = {}
    while len(cells) < count:
        spec = space.sample(study.ask())
        if len(spec.nodes) >= min_live and sum(n.op == "linear" for n in spec.nodes) >= 2:
            cells[f"graph{len(cells)}"] = spec
    return cells


def prepare_ms(spec: CellSpec, hidden: int, device: str) -> float:
    """Cold preparation of one cell: caches cleared, then build it and its sequence code (on the
    CPU, its C kernels compiled too; on a GPU, the Triton kernels' source: Triton compiles them at
    the first step, see first ms)."""
    cell_compile._plan.cache_clear()
    program.cache_clear()
    gpu_program.cache_clear()
    c_program.cache_clear()
    start = time.perf_counter()
    CellRNN(spec, hidden, hidden)
    program(spec)
    if device.startswith("cuda"):
        gpu_program(spec)
    elif C.works(torch.device("cpu"), torch.float32, DEFAULT):
        C.build(spec, torch.float32, DEFAULT)
    return (time.perf_counter() - start) * 1e3


def stored_cells(path: str) -> dict[str, CellSpec]:
    """The `graph` cells of an earlier run's JSON (for machines without optuna)."""
    data = json.loads(Path(path).read_text())
    return {name: CellSpec.from_dict(d) for name, d in data["cells"].items()}


class StoreOnly(c_loop.LoopCKernel):
    """LoopCKernel whose stage kernels take the same arguments and store zeros where the real ones
    store results, computing nothing (--floor)."""

    def assign(self, var: str, expr: str) -> None:
        pass

    def load(self, views: list[str], var: str) -> str:
        for v in views:
            self._ptr(v)  # the same arguments as the real kernel's
        return var

    def store(self, view: str, value: str) -> None:
        self.body.append(f"p{self._ptr(view)}[c] = 0;")


# The floor models' layers and their store-only programs: their CPU float32 calls run these, not the
# program their backend setting selects (which no setting can name: it computes nothing).
_FLOORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _select_floors(cell, xs: torch.Tensor, dtype: torch.dtype, select=function.select):
    floor = _FLOORS.get(cell) if dtype == torch.float32 and not xs.is_cuda and xs.numel() else None
    return select(cell, xs, dtype) if floor is None else floor


def floor_model(spec: CellSpec, hidden: int) -> CellRNN:
    model = CellRNN(spec, hidden, hidden)
    floor = build_c_program(spec, torch.float32, StoreOnly)
    for layer in model.layers:
        _FLOORS[layer] = floor
    function.select = _select_floors  # (every model's calls go through it: the same cost for all)
    return model


def variant(model: CellRNN, **setting) -> CellRNN:
    """The model with its backend setting changed (backend, cuda_graphs, c_loop)."""
    model.policy = model.policy.replace(**setting)
    return model


def make_models(hidden: int, cells: dict[str, CellSpec], args, device: str) -> tuple[dict, dict]:
    models: dict[str, torch.nn.Module] = {
        "torch.nn.LSTM": torch.nn.LSTM(hidden, hidden),
        "torch.nn.GRU": torch.nn.GRU(hidden, hidden),
    }
    prep: dict[str, float] = {}
    for name, spec in cells.items():
        prep[f"CellRNN({name})"] = prepare_ms(spec, hidden, device)
        models[f"CellRNN({name})"] = CellRNN(spec, hidden, hidden)
        if args.eager and device.startswith("cuda"):
            models[f"CellRNN({name}, no graphs)"] = variant(CellRNN(spec, hidden, hidden), cuda_graphs="off")
        if args.torch_kernels:
            models[f"CellRNN({name}, torch kernels)"] = variant(CellRNN(spec, hidden, hidden), backend="torch")
        if args.python_loop and device == "cpu":
            models[f"CellRNN({name}, Python loop)"] = variant(CellRNN(spec, hidden, hidden), c_loop=False)
        if args.reference:
            models[f"CellRNN({name}, fused=False)"] = CellRNN(spec, hidden, hidden, fused=False)
        if args.floor and device == "cpu" and not args.bf16 and c_loop.available(torch.float32) \
                and c_works(torch.float32, loop=True):
            models[f"CellRNN({name}, empty kernels)"] = floor_model(spec, hidden)
    return models, prep


class Stepper:
    """One training step of a model: forward, loss, backward, Adam."""

    def __init__(self, model: torch.nn.Module, device: str, bf16: bool = False) -> None:
        self.model, self.device, self.bf16 = model.to(device), device, bf16
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.cuda_peak = 0  # bytes (CUDA), see peak_mib
        self.first = 0.0  # seconds of the first step (kernel compilation included)

    def __call__(self, x: torch.Tensor) -> None:
        with torch.autocast(self.device.split(":")[0], torch.bfloat16, enabled=self.bf16):
            out, _ = self.model(x)
        loss = out.float().pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def time_steps(steppers: dict[str, Stepper], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for step in steppers.values():  # warm-up: allocator, caches, BLAS packing, Adam state, CUDA graphs
        cuda = step.device.startswith("cuda")
        if cuda:  # the memory this model's steps need, measured alone (see peak_mib)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved()
        for i in range(3):
            step.sync()
            t0 = time.perf_counter()
            step(x)
            step.sync()
            if i == 0:
                step.first = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # what the warm-up cached but does not hold
            torch.cuda.reset_peak_memory_stats()
            step(x)
            torch.cuda.synchronize()
            state = 3 * sum(p.numel() * p.element_size() for p in step.model.parameters())
            step.cuda_peak = torch.cuda.max_memory_reserved() - before - state
    # Each round in a new (seeded) order: in a fixed order each model follows the same one, which
    # leaves caches, the allocator and the pool in its own state (an A/B run in a fixed order made
    # the second of two identical-size variants up to 15% slower).
    order, rng = list(steppers.items()), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name, step in order:
            step.sync()
            t0 = time.perf_counter()
            step(x)
            step.sync()
            times[name].append(time.perf_counter() - t0)
    return times


def saved_mib(step: Stepper, x: torch.Tensor) -> float:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(step.device.split(":")[0], torch.bfloat16, enabled=step.bf16):
        out, _ = step.model(x)
    del out
    return sum(storages.values()) / 2**20


def peak_mib(step: Stepper, x: torch.Tensor) -> float | None:
    if step.device.startswith("cuda"):
        return step.cuda_peak / 2**20  # measured during the warm-up of time_steps
    from torch.profiler import ProfilerActivity, profile

    # The C code's large buffers come from a pool that keeps them between steps (nas.compile.backends.c.pool):
    # emptied first, the step allocates them again, inside the measurement.
    POOL.clear()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step(x)
        timeline = prof._memory_profile().timeline  # private API: skip the column if it moves
    except (AttributeError, RuntimeError):
        return None
    live = peak = 0
    for _, action, key, size in timeline:
        if key[0].device.type == "cpu" and action.name in ("CREATE", "DESTROY"):
            live += size if action.name == "CREATE" else -size
            peak = max(peak, live)
    return peak / 2**20


def run_size(batch: int, steps: int, hidden: int, cells: dict[str, CellSpec], args, device: str) -> dict:
    models, prep = make_models(hidden, cells, args, device)
    steppers = {k: Stepper(m, device, args.bf16) for k, m in models.items()}
    x = torch.randn(steps, batch, hidden, device=device)
    times = time_steps(steppers, x, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name, t in med.items():
        cell = name[len("CellRNN("):].split(")")[0].split(",")[0] if name.startswith("CellRNN(") else None
        ref = None if cell is None else BASELINE.get(cell, "CellRNN(lstm)")
        row = {"model": name, "median_ms": round(t * 1e3, 2),
               "iqr_ms": round((statistics.quantiles(times[name], n=4)[2]
                                - statistics.quantiles(times[name], n=4)[0]) * 1e3, 2)
               if len(times[name]) > 1 else 0.0,
               "vs": ref, "ratio": round(t / med[ref], 3) if ref in med else None,
               "prep_ms": round(prep[name], 1) if name in prep else None,
               "first_step_ms": round(steppers[name].first * 1e3, 1)}
        if not args.no_memory:
            row["saved_mib"] = round(saved_mib(steppers[name], x), 1)
            peak = peak_mib(steppers[name], x)
            row["peak_mib"] = None if peak is None else round(peak, 1)
        rows.append(row)
    return {"device": device, "batch": batch, "steps": steps, "hidden": hidden, "bf16": args.bf16,
            "repeats": args.repeats, "rows": rows}


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    name = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.startswith("cuda"):
        name += f", {torch.cuda.get_device_name()}"
    return name


def print_table(res: dict) -> None:
    print(f"\ntraining step (fwd+bwd+Adam), batch {res['batch']}, {res['steps']} steps, hidden "
          f"{res['hidden']}, {res['device']}{', bf16 autocast' if res['bf16'] else ''}, {res['repeats']} repeats")
    print(f"{'model':32s} {'median ms':>10s} {'iqr':>7s}  {'ratio':24s} {'saved MiB':>9s} "
          f"{'peak MiB':>9s} {'prep ms':>8s} {'first ms':>9s}")
    for r in res["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x vs {r['vs']}"
        fmt = lambda v, spec: "" if v is None else format(v, spec)
        print(f"{r['model']:32s} {r['median_ms']:10.2f} {r['iqr_ms']:7.2f}  {ratio:24s} "
              f"{fmt(r.get('saved_mib'), '9.1f'):>9s} {fmt(r.get('peak_mib'), '9.1f'):>9s} "
              f"{fmt(r['prep_ms'], '8.1f'):>8s} {r['first_step_ms']:9.1f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                   help="batch x steps x hidden, comma separated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--cells", default="lstm,gru,nas_cell,darts_v2")
    p.add_argument("--graph", type=int, default=3, help="random graph-space cells (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu,cuda", help="devices to run; cuda is skipped if absent")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; search workers use 1)")
    p.add_argument("--reference", action="store_true", help="also time CellRNN(..., fused=False)")
    p.add_argument("--eager", action="store_true", help="GPU: also time the fast path without CUDA graphs (cuda_graphs=\"off\")")
    p.add_argument("--torch-kernels", action="store_true",
                   help="also time the torch code of the fast path (backend=\"torch\")")
    p.add_argument("--python-loop", action="store_true",
                   help="CPU: also time the C kernels with the time loop in Python (Policy(c_loop=False))")
    p.add_argument("--floor", action="store_true",
                   help="CPU, float32, where the C loop works: also time each cell with store-only stage "
                        "kernels (no elementwise arithmetic)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as the GPU trainer runs)")
    p.add_argument("--graph-cells", help="take the graph cells from this earlier run's JSON")
    p.add_argument("--no-memory", action="store_true", help="skip the memory columns")
    p.add_argument("--quick", action="store_true", help="small size, 3 repeats, 1 graph cell")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.graph = "x".join(map(str, SIZES[0])), 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    cells = {name: known_cell(name) for name in args.cells.split(",") if name}
    cells.update(stored_cells(args.graph_cells) if args.graph_cells else graph_cells(args.graph, args.seed))
    devices = [d for d in args.device.split(",") if d == "cpu" or torch.cuda.is_available()]
    load = os.getloadavg()
    results = []
    for device in devices:
        for size in args.sizes.split(","):
            batch, steps, hidden = map(int, size.split("x"))
            res = run_size(batch, steps, hidden, cells, args, device)
            res["machine"] = machine(device)
            print_table(res)
            results.append(res)
    out = {"torch": torch.__version__, "python": platform.python_version(), "argv": sys.argv[1:],
           "load_average_before": [round(v, 2) for v in load],
           "load_average_after": [round(v, 2) for v in os.getloadavg()],
           "cells": {k: v.to_dict() for k, v in cells.items() if k.startswith("graph")},
           "results": results}
    print(f"\nload average before {out['load_average_before']}, after {out['load_average_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
