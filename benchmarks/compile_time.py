"""How long the compiler takes to make a cell ready, against the bounds the project keeps.

These were wall-time asserts in the tests (tests/compile/test_modules.py, test_fast_path.py,
test_large_cells.py); a loaded CI machine made them flaky, so they are measured here instead. Each
line gives the time and its bound; the exit status is 1 when a bound is exceeded.

    python benchmarks/compile_time.py            # all four measurements
    python benchmarks/compile_time.py --json runs/bench/compile_time.json

Measurements (each with its caches cleared first, as a new process pays them):
    step code        CellRNN of 20 random cells (lowering and the step code): median < 1 s
    sequence code    the whole-sequence torch code of 20 random cells, darts_v2 and nas_cell:
                     median < 0.2 s, max < 1 s
    300-node chain   above the kernel cap: a 2-layer CellRNN built, trained one step (forward,
                     backward, a second forward) and exported: < 30 s
    1000-node chain  CellSpec's limit: built and trained one step: < 30 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' random and large cells

from random_cells import chain, random_cells

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.compile import modules as compiled
from nas.compile.plan import lower
from nas.compile.sequence.program import program
from nas.export import export_cell


def _sizes(spec) -> tuple[int, int]:
    return (4, 4) if lower(spec).needs_raw_x else (5, 4)


def step_code() -> dict:
    times = []
    for spec in random_cells(seed=13, count=20):
        compiled._plan.cache_clear()
        start = time.perf_counter()
        CellRNN(spec, *_sizes(spec))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"name": "step code", "median_s": median, "bound": "median < 1 s", "ok": median < 1.0}


def sequence_code() -> dict:
    times = []
    for spec in random_cells(seed=33, count=20) + [known_cell("darts_v2"), known_cell("nas_cell")]:
        program.cache_clear()
        start = time.perf_counter()
        program(spec)
        times.append(time.perf_counter() - start)
    median, worst = statistics.median(times), max(times)
    return {"name": "sequence code", "median_s": median, "max_s": worst, "bound": "median < 0.2 s, max < 1 s",
            "ok": median < 0.2 and worst < 1.0}


def chain_300() -> dict:
    start = time.perf_counter()
    spec = chain(300, "chain300")
    rnn = CellRNN(spec, 8, 8, num_layers=2).double()
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    out, _ = rnn(x)
    out.sum().backward()
    rnn(x)
    with tempfile.TemporaryDirectory() as tmp:
        export_cell(spec, Path(tmp) / "chain300", weights=rnn.state_dict())
    seconds = time.perf_counter() - start
    return {"name": "300-node chain", "seconds": seconds, "bound": "< 30 s", "ok": seconds < 30}


def chain_1000() -> dict:
    start = time.perf_counter()
    rnn = CellRNN(chain(1000, "chain1000"), 8, 8)
    out, _ = rnn(torch.randn(3, 2, 8))
    out.sum().backward()
    seconds = time.perf_counter() - start
    return {"name": "1000-node chain", "seconds": seconds, "bound": "< 30 s", "ok": seconds < 30}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the large chains' "runs the torch code"
        rows = [step_code(), sequence_code(), chain_300(), chain_1000()]
    for r in rows:
        times = ", ".join(f"{k.removesuffix('_s').replace('seconds', 'took')} {v * 1e3:.1f} ms"
                          for k, v in r.items() if k.endswith("_s") or k == "seconds")
        print(f"{r['name']:16s} {times:36s} bound {r['bound']:26s} {'ok' if r['ok'] else 'EXCEEDED'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
