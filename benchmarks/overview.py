"""The README's picture: a finished study's best new cell next to its final comparison.

    python benchmarks/overview.py runs/search/showcase --out docs/images/overview.png

Reads the study folder that nas-search wrote: report/comparison.csv (the final comparison: test bpc
mean and std over seeds, per cell) and trials/<trial>/cell.json of the best new cell. Draws the
cell (nas.cell.draw) on the left and the comparison on the right, new cells and baselines in two
colours, with the number of seeds in the title.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path


def read_comparison(study_dir: Path) -> list[dict]:
    """The rows of report/comparison.csv that have a test score, best first."""
    path = study_dir / "report" / "comparison.csv"
    if not path.is_file():
        raise SystemExit(f"overview: no final comparison at {path}: run the search's report first")
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["test_bpc_mean"]]
    return sorted(rows, key=lambda r: float(r["test_bpc_mean"]))


def draw(study_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.cell import CellSpec
    from nas.cell.draw import draw_cell

    rows = read_comparison(study_dir)
    new = [r for r in rows if r["role"] == "trial"]
    if not new:
        raise SystemExit("overview: the comparison holds no new cell")
    best = new[0]
    spec = CellSpec.from_file(study_dir / "trials" / f"{int(best['trial']):05d}" / "cell.json")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.15, 1]})
    with tempfile.TemporaryDirectory() as tmp:
        left.imshow(plt.imread(draw_cell(spec, Path(tmp) / "cell.png", title=best["label"])))
    left.axis("off")
    labels = [r["label"] for r in rows][::-1]
    means = [float(r["test_bpc_mean"]) for r in rows][::-1]
    stds = [float(r["test_bpc_std"] or 0) for r in rows][::-1]
    colours = ["tab:blue" if r["role"] == "trial" else "tab:orange" for r in rows][::-1]
    for y, (mean, std, colour) in enumerate(zip(means, stds, colours)):  # points: the axis does not start at 0
        right.errorbar(mean, y, xerr=std, fmt="o", color=colour, capsize=4, markersize=7)
    right.set_yticks(range(len(labels)), labels)
    right.grid(axis="x", alpha=0.3)
    right.set_xlabel("test bits per character (lower is better), mean ± std over seeds")
    seeds = rows[0]["n_seeds"]
    right.set_title(f"final comparison: new cells (blue) and baselines (orange), {seeds} seeds")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="runs/search/<study>")
    parser.add_argument("--out", type=Path, default=Path("docs/images/overview.png"))
    args = parser.parse_args(argv)
    print(draw(args.study_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
