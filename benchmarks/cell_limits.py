"""Wall time of reading cells at and beyond the input limits (nas/cell/spec.py's docstring).

Any cell input must be accepted or refused quickly. tests/cell/test_limits.py checks what each
pathological input gives (the rule it breaks, no RecursionError); this times the same shapes of
input and compares each with a generous bound (10 s: the inputs are built to be the worst the
limits allow). Measured before: under 0.05 s each, except a cell at the node and operand limits
(0.25 s idle, 0.7 s on a loaded 2-core machine).

    python benchmarks/cell_limits.py            # JSON on stdout; exit status 1 if a bound is passed
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BOUND_S = 10.0


def chain(n: int, reverse: bool = False) -> dict:
    """A chain of n nodes alternating linear(prev, x) and tanh(prev); reversed: the worst order for
    a sort that rescans."""
    from nas.cell.known import f, lin

    nodes = {"n0": lin("x", "h")}
    for i in range(1, n):
        nodes[f"n{i}"] = lin(f"n{i - 1}", "x") if i % 2 else f("tanh", f"n{i - 1}")
    if reverse:
        nodes = dict(reversed(nodes.items()))
    return {"state": ["h"], "nodes": nodes, "outputs": {"h": f"n{n - 1}"}}


def dense(n: int, k: int) -> dict:
    """n nodes, each reading the k nodes before it: the most work the limits allow."""
    from nas.cell.known import f, lin

    nodes = {"n0": lin("x", "h")}
    for i in range(1, n):
        reads = [f"n{j}" for j in range(max(0, i - k), i)]
        nodes[f"n{i}"] = lin(*reads) if i % 2 else f("mean", *reads)
    return {"state": ["h"], "nodes": dict(reversed(nodes.items())), "outputs": {"h": f"n{n - 1}"}}


def cases(folder: Path) -> dict[str, Callable[[], object]]:
    """name -> a call that reads one pathological input (refused ones raise CellError)."""
    from nas.cell import CellSpec
    from nas.cell.draw import draw_cell
    from nas.cell.known import f, lin
    from nas.cell.spec import MAX_FILE_BYTES, MAX_NODES, MAX_OPERANDS

    def read(data: dict) -> Callable[[], object]:
        text = json.dumps(data)
        return lambda: CellSpec.from_json(text).canonical_hash()

    many = {"state": ["h"], "nodes": {"a": lin("x", "h"), "m": f("mean", *["a"] * 5000)}, "outputs": {"h": "m"}}
    deep = "[" * 100_000 + "]" * 100_000
    huge = json.dumps({**chain(2), "name": "n" * (2 * MAX_FILE_BYTES)})
    drawn = CellSpec.from_dict(chain(300))
    return {
        "refuse_10000_nodes": read(chain(10_000)),
        "chain_300": read(chain(300, reverse=True)),
        f"chain_{MAX_NODES}": read(chain(MAX_NODES, reverse=True)),
        f"dense_{MAX_NODES}x{MAX_OPERANDS}": read(dense(MAX_NODES, MAX_OPERANDS)),
        "refuse_deep_json": lambda: CellSpec.from_json(deep),
        "refuse_5000_operands": read(many),
        "refuse_huge_text": lambda: CellSpec.from_json(huge),
        "draw_300_nodes_as_card": lambda: draw_cell(drawn, folder / "chain.svg"),
    }


def measure() -> dict[str, dict]:
    """Seconds per case (refusals included), and whether each stayed within BOUND_S."""
    from nas.cell import CellError

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, call in cases(Path(tmp)).items():
            start = time.perf_counter()
            try:
                call()
                outcome = "accepted"
            except CellError:
                outcome = "refused"
            seconds = time.perf_counter() - start
            out[name] = {"seconds": round(seconds, 4), "outcome": outcome, "within_bound": seconds < BOUND_S}
    return out


def main() -> int:
    results = measure()
    print(json.dumps({"bound_s": BOUND_S, "cases": results}, indent=2))
    return 0 if all(r["within_bound"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
