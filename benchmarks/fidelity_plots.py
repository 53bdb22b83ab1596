"""The pictures and the text summary of benchmarks/fidelity.py's result (its docstring says what they
show): a scatter of short- against long-budget val bpc, and the pruner's rungs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.stats import save_figure


def plot(table: list[dict], short: list[int], long: int, threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(short), figsize=(5.5 * len(short), 5), squeeze=False)
    for ax, b in zip(axes[0], short):
        for c in table:
            xs, ys = c["val_bpc"][str(b)], c["val_bpc"][str(long)]
            if c["mean"][str(b)] is None or c["mean"][str(long)] is None:
                continue
            color = "tab:red" if c["reference"] else ("tab:blue" if c["learns"] else "tab:gray")
            ax.errorbar(np.mean(xs), np.mean(ys), xerr=np.std(xs), yerr=np.std(ys), fmt="o", ms=4,
                        color=color, capsize=2)
            if c["reference"]:
                ax.annotate(c["label"], (np.mean(xs), np.mean(ys)), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.axhline(threshold, color="tab:gray", ls=":", lw=1)  # below it a cell learns
        ax.set_xlabel(f"val bpc after {b} steps")
        ax.set_ylabel(f"val bpc after {long} steps")
        ax.set_title(f"{b} vs {long} steps (gray: does not learn)")
    fig.suptitle(title)
    save_figure(fig, path)


def rungs_plot_path(plot_path: Path) -> Path:
    return plot_path.with_name(f"{plot_path.stem}_rungs{plot_path.suffix}")


def plot_rungs(result: dict[str, Any], path: Path) -> None:
    """Per curve budget, against the step of its curve: Spearman with the long budget (95% CI) and
    the top-3 / top-5 long-budget cells that survive successive halving's cut there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for b, by_step in result["rungs"]["by_budget"].items():
        steps = [int(s) for s in by_step if by_step[s]["spearman"] is not None]
        rho = [by_step[str(s)]["spearman"] for s in steps]
        ci = [by_step[str(s)]["spearman_ci95"] or [r, r] for s, r in zip(steps, rho)]
        err = [[r - lo for r, (lo, _) in zip(rho, ci)], [hi - r for r, (_, hi) in zip(rho, ci)]]
        left.errorbar(steps, rho, yerr=err, marker="o", ms=4, capsize=2, label=f"{b}-step runs")
        for k, style in (("top3", "o-"), ("top5", "s--")):
            rate = [by_step[str(s)]["cut"][k]["rate"] for s in steps]
            right.plot(steps, rate, style, ms=4, label=f"{b}-step runs, long {k[:3]}-{k[3:]}")
    finals = [(b, result["budgets"][str(b)]) for b in result["short_budgets"]]
    finals = [(b, s["spearman"]) for b, s in finals if s["spearman"] is not None]
    left.plot([b for b, _ in finals], [r for _, r in finals], "kx", ms=8,
              label="final score of a run of that many steps")
    left.set_xlabel("step of the run (intermediate val bpc)")
    left.set_ylabel(f"Spearman vs {result['long_steps']} steps (95% CI)")
    left.legend(fontsize=8)
    right.set_xlabel("rung step")
    right.set_ylabel(f"fraction kept by a best-1/{result['rungs']['reduction_factor']} cut")
    right.set_ylim(-0.05, 1.05)
    right.legend(fontsize=8)
    fig.suptitle(f"the pruner's rungs, {result['space']} space, cells that learn, seed means")
    save_figure(fig, path)


def summary(result: dict[str, Any]) -> str:
    lines = [(f"{result['cells_learning']}/{result['cells_total']} cells learn "
              f"(long budget {result['long_steps']} steps)")]
    for b in result["short_budgets"]:
        s = result["budgets"][str(b)]
        lines.append(f"{b} vs {result['long_steps']} steps, {s['cells']} cells: Spearman {s['spearman']} "
                     f"{s['spearman_ci95']}, Kendall {s['kendall']} {s['kendall_ci95']}, top-5 overlap "
                     f"{s['top5']['overlap']}/{s['top5']['k']}, seed std {s['seed_spread']['seed_std_mean']} "
                     f"vs adjacent gap {s['seed_spread']['adjacent_gap_median']}")
    for b, by_step in result["rungs"]["by_budget"].items():
        for step, s in by_step.items():
            cut = s["cut"]
            lines.append(f"step {step} of the {b}-step runs, {s['cells']} cells: Spearman {s['spearman']} "
                         f"{s['spearman_ci95']}, Kendall {s['kendall']}, top-5 overlap {s['top5']['overlap']}"
                         f"/{s['top5']['k']}, a best-{cut['kept']}-of-{cut['n']} cut keeps "
                         f"{cut['top3']['survive']}/{cut['top3']['k']} of the long top-3 and "
                         f"{cut['top5']['survive']}/{cut['top5']['k']} of the top-5 (one seed: "
                         f"{s['cut_per_seed']['top3']}, {s['cut_per_seed']['top5']})")
    return "\n".join(lines)
