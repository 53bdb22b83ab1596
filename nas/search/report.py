"""The final comparison: the best cells of a study against the baselines, on the test split, with seeds.

    final_comparison(study, app, tracker) -> Comparison

1. the top_k distinct best cells of the study (COMPLETE trials, duplicates skipped, by val bpc) and
   every baseline of app.baselines;
2. each retrained with seeds seed, seed+1, ..., seed+S-1 at the study's budget (same trainer, data
   and parameter budget as the search) and scored on the test split; each retrain is cached in the
   study (user attr final:<cell hash>:<seed>:<budget>), so a rerun or `nas-report` reuses it, and
   logged as an MLflow run with role=final;
3. mean +- std of the test bpc per cell (sample std over the seeds that did not diverge), as a table
   (Comparison.markdown(), .csv()) and plots in <out_dir>/report/: val-bpc learning curves (mean
   over seeds) of the top cells vs the baselines, test bpc vs parameter count, best-so-far vs trial;
4. for each new cell against each baseline, the paired difference of test bpc over the same seeds
   (same data order and initialisation seed for both), its mean and a 95% Student-t interval:
   "better" when the interval lies below 0, "worse" above, "not distinguishable" when it holds 0
   (or with fewer than 2 paired seeds). Comparison.verdicts() says per baseline whether any new
   cell beat it.

Only *new* cells are compared: a trial whose cell is a reference cell (a search seeded with them finds
them again) is not a discovery; the reference cells are in the table as baselines.

With app.workers > 1 the retrains run in a process pool of that size (spawn, one torch thread
each); results are the same as in one process, since every retrain is seeded.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas import trials
from nas.config import SearchApp, search_app
from nas.search.objective import budget_key
from nas.search.results import label
from nas.search.retrain import TrainJob, run_jobs, scores
from nas.search.summary import ComparisonRow, best_new_trials
from nas.trials import TrialRecord

log = logging.getLogger("nas.search.report")


@dataclass(frozen=True)
class PairedDifference:
    """test bpc of `cell` minus that of `baseline`, paired by seed; negative: the cell is better."""

    cell: str
    baseline: str
    n: int                          # seeds where both have a test score
    mean: float | None
    low: float | None               # 95% Student-t interval of the mean difference
    high: float | None

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "not distinguishable"
        if self.high < 0:
            return "better"
        if self.low > 0:
            return "worse"
        return "not distinguishable"

    def text(self) -> str:
        if self.mean is None:
            return "no paired seeds"
        if self.low is None:
            return f"{self.mean:+.4f} (1 seed)"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


@dataclass(frozen=True)
class Comparison:
    study: str
    budget: str
    seeds: tuple[int, ...]
    rows: tuple[ComparisonRow, ...]     # best test bpc first
    files: tuple[str, ...]              # comparison.md, comparison.csv and the plots in out_dir/report
    pairs: tuple[PairedDifference, ...] = ()

    def best(self) -> ComparisonRow | None:
        """The best new cell (role trial) with a test score, or None."""
        return next((r for r in self.rows if r.role == "trial" and r.test_bpc is not None), None)

    def verdicts(self) -> list[str]:
        """One plain sentence per baseline: did any new cell beat it (paired 95% interval below 0)?"""
        if not any(r.role == "trial" for r in self.rows):
            return ["No new cell was retrained: the search completed no cell that is not a reference cell."]
        out = []
        for base in (r.label for r in self.rows if r.role == "baseline"):
            mine = [p for p in self.pairs if p.baseline == base]
            wins = [p for p in mine if p.verdict == "better"]
            if wins:
                out.append(f"{base}: beaten by " + ", ".join(f"{p.cell} ({p.text()})" for p in wins) + ".")
            else:
                best = min((p for p in mine if p.mean is not None), key=lambda p: p.mean, default=None)
                closest = f" closest: {best.cell}, {best.verdict} ({best.text()})" if best else ""
                out.append(f"{base}: no new cell beats it;{closest}.")
        return out

    def pairs_markdown(self) -> str:
        lines = ["| new cell | baseline | paired seeds | test bpc difference, mean [95% CI] | verdict |",
                 "|---|---|---|---|---|"]
        lines += [f"| {p.cell} | {p.baseline} | {p.n} | {p.text()} | {p.verdict} |" for p in self.pairs]
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        head = ("| cell | role | test bpc (mean ± std) | seeds | val bpc | params | chars/s | hash |\n"
                "|---|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            test = "diverged" if r.test_bpc is None else f"{r.test_bpc:.4f} ± {r.test_std:.4f}"
            seeds = f"{r.n_seeds}" + (f" (+{r.diverged} diverged)" if r.diverged else "")
            lines.append(f"| {r.label} | {r.role} | {test} | {seeds} | {_num(r.val_bpc, '.4f')} | "
                         f"{_num(r.params, ',')} | {_num(r.chars_per_sec, ',.0f')} | `{r.cell_hash}` |")
        seeds = ", ".join(map(str, self.seeds))
        text = (f"Study `{self.study}`: test bits per character, seeds {seeds}, budget `{self.budget}`.\n\n"
                + "\n".join(lines) + "\n")
        if self.pairs:
            text += ("\nNew cells against the baselines (test bpc, cell minus baseline, paired by seed; "
                     "negative is better):\n\n" + self.pairs_markdown())
        return text + "\n" + "\n".join(f"- {v}" for v in self.verdicts()) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["label", "role", "cell_hash", "test_bpc_mean", "test_bpc_std", "n_seeds", "diverged",
                    "val_bpc_mean", "params", "chars_per_sec", "trial"])
        for r in self.rows:
            w.writerow([r.label, r.role, r.cell_hash, _csv(r.test_bpc), _csv(r.test_std), r.n_seeds,
                        r.diverged, _csv(r.val_bpc), _csv(r.params), _csv(r.chars_per_sec), _csv(r.trial)])
        return out.getvalue()


@dataclass(frozen=True)
class _Subject:
    label: str
    role: str                     # "trial" or "baseline"
    cell_json: str
    trial: int | None = None

    @property
    def hash(self) -> str:
        from nas.cell import CellSpec

        return CellSpec.from_json(self.cell_json).canonical_hash()


def final_comparison(study: optuna.Study, app: SearchApp | Mapping[str, Any], tracker=None,
                     progress: bool = False) -> Comparison:
    """Retrain the top cells and the baselines with S seeds on the test split; write the table and
    plots to <out_dir>/report/ (the caller logs them: tracker.log_comparison)."""
    from nas.data import load_corpus

    app = search_app(app)
    corpus = load_corpus(app.data.path, app.data.cache_dir, app.data.format)
    search_budget = budget_key(app.trainer, app.seed, corpus.source_hash)
    # The finalists are retrained longer than a trial where report.steps says so (the search's
    # short budget only has to rank cells; the comparison should say how good they are).
    app = final_config(app)
    budget = budget_key(app.trainer, app.seed, corpus.source_hash)
    subjects = top_cells(study, app.report.top_k) + _baselines(app.baselines)
    seeds = tuple(app.seed + i for i in range(app.report.seeds))
    results = _retrain_all(study, app, subjects, seeds, budget, progress)
    if tracker is not None:
        for s in subjects:
            for seed in seeds:
                tracker.log_final(study, s.label, s.role, results[s.label, seed], app)
    rows = sorted((_row(s, [results[s.label, seed] for seed in seeds]) for s in subjects),
                  key=lambda r: (r.test_bpc is None, r.test_bpc or 0.0))
    pairs = tuple(paired_difference(s.label, b.label, [results[s.label, seed] for seed in seeds],
                                    [results[b.label, seed] for seed in seeds])
                  for s in subjects if s.role == "trial" for b in subjects if b.role == "baseline")
    out = Path(app.out_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(study.study_name, budget, seeds, tuple(rows), (), pairs)
    (out / "comparison.md").write_text(comparison.markdown())
    (out / "comparison.csv").write_text(comparison.csv())
    plots = (_plot_curves(out / "learning_curves.png", subjects, seeds, results),
             _plot_test_vs_params(out / "test_bpc_vs_params.png", rows),
             _plot_best_so_far(out / "best_so_far.png", study, app.baselines, search_budget))
    files = tuple(str(p) for p in (out / "comparison.md", out / "comparison.csv", *plots))
    return Comparison(study.study_name, budget, seeds, tuple(rows), files, pairs)


def final_config(app: SearchApp) -> SearchApp:
    """The search config as the final comparison trains: the trainer's steps set to report.steps
    (None: the search's own steps)."""
    if not app.report.steps:
        return app
    return replace(app, trainer=replace(app.trainer, steps=app.report.steps))


def paired_difference(cell: str, baseline: str, mine: list[dict[str, Any]],
                      theirs: list[dict[str, Any]]) -> PairedDifference:
    """Mean and 95% Student-t interval of test_bpc(cell) - test_bpc(baseline) over the seeds where
    both have a score (results given in the same seed order)."""
    diffs = [a["test_bpc"] - b["test_bpc"] for a, b in zip(mine, theirs)
             if a.get("test_bpc") is not None and b.get("test_bpc") is not None]
    if not diffs:
        return PairedDifference(cell, baseline, 0, None, None, None)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(cell, baseline, 1, mean, None, None)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return PairedDifference(cell, baseline, len(diffs), mean, mean - half, mean + half)


def top_cells(study: optuna.Study, k: int) -> list[_Subject]:
    """The k best distinct *new* cells of the study (COMPLETE, not duplicates, not reference cells),
    best first."""

    return [_Subject(label(t), "trial", TrialRecord.of(t).cell_json, t.number) for t in best_new_trials(study, k)]


def _baselines(names: list[str]) -> list[_Subject]:
    from nas.cell import known_cell

    return [_Subject(name, "baseline", known_cell(name).to_json(indent=None)) for name in names]


def _retrain_all(study, app, subjects, seeds, budget, progress) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (subject, seed) result: from the study's cache, else trained (in a pool if workers > 1)."""
    from nas.cell import CellSpec

    results, jobs = {}, []
    for s in subjects:
        h = CellSpec.from_json(s.cell_json).canonical_hash()
        for seed in seeds:
            cached = trials.final_result(study, h, seed, budget)
            if cached is not None:
                results[s.label, seed] = cached
                if not progress:
                    log.info("final comparison: %s seed %d: %s (trained by an earlier run)", s.label, seed,
                             scores(cached))
            else:
                run_dir = Path(app.out_dir) / "final" / f"{h}-s{seed}"
                jobs.append(TrainJob(s.label, s.cell_json, app, seed, str(run_dir.resolve()), budget))
    for job, data in zip(jobs, run_jobs(jobs, app.workers, progress, "final comparison")):
        trials.store_final_result(study, data["cell_hash"], job.seed, budget, data)  # cached at once
        results[job.label, job.seed] = data
    return results


def _row(s: _Subject, results: list[dict[str, Any]]) -> ComparisonRow:
    tests = [r["test_bpc"] for r in results if r.get("test_bpc") is not None]
    vals = [r["val_bpc"] for r in results if r.get("val_bpc") is not None]
    speeds = [r["chars_per_sec"] for r in results if r.get("chars_per_sec")]
    return ComparisonRow(
        label=s.label, role=s.role, cell_hash=results[0]["cell_hash"],
        test_bpc=statistics.fmean(tests) if tests else None,
        test_std=statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
        n_seeds=len(tests), val_bpc=statistics.fmean(vals) if vals else None, params=results[0]["params"],
        chars_per_sec=statistics.fmean(speeds) if speeds else None,
        diverged=sum(1 for r in results if r.get("divergence")), trial=s.trial)


# -- plots (matplotlib Figures on an Agg canvas: nothing registered globally, nothing to close) -------

def _figure(xlabel: str, ylabel: str, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, ax, path: Path) -> Path:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "nothing to show yet", transform=ax.transAxes, ha="center", color="0.5")
    fig.savefig(path, dpi=110)
    return path


def _plot_curves(path: Path, subjects: list[_Subject], seeds, results) -> Path:
    """Val bpc per training step, mean over the seeds: top cells solid, baselines dashed."""
    fig, ax = _figure("training step", "val bpc (mean over seeds)", "Learning curves: top cells vs baselines")
    for s in subjects:
        curves = [c for c in (results[s.label, seed].get("curve") or [] for seed in seeds) if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
        ax.plot([p[0] for p in curves[0][:n]], mean, "-" if s.role == "trial" else "--", marker=".",
                label=s.label, linewidth=2.2 if s.role == "trial" else 1.4)
    return _save(fig, ax, path)


def _plot_test_vs_params(path: Path, rows: list[ComparisonRow]) -> Path:
    fig, ax = _figure("parameters", "test bpc (mean ± std over seeds)", "Test bpc vs parameter count")
    for role, colour in (("trial", "tab:blue"), ("baseline", "tab:orange")):
        mine = [r for r in rows if r.role == role and r.test_bpc is not None and r.params]
        if mine:
            ax.errorbar([r.params for r in mine], [r.test_bpc for r in mine], [r.test_std or 0 for r in mine],
                        fmt="o", capsize=3, color=colour,
                        label="searched cells" if role == "trial" else "baselines")
    shown = [r for r in rows if r.test_bpc is not None and r.params]
    for (x, y), labels in label_groups([(r.params, r.test_bpc, r.label) for r in shown]):
        ax.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    return _save(fig, ax, path)


def label_groups(points: list[tuple[float, float, str]], near_x: float = 0.15, near_y: float = 0.03
                 ) -> list[tuple[tuple[float, float], list[str]]]:
    """Points (x, y, label) whose labels would overlap (within `near_x` of the x range, about a
    label's width, and `near_y` of the y range), as one label each: ((x, y) of the group's lowest
    point, its labels, lowest first). Equal results would otherwise print on top of each other."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[tuple[tuple[float, float], list[str]]] = []
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        for (gx, gy), labels in groups:
            if abs(x - gx) <= near_x * dx and abs(y - gy) <= near_y * dy:
                labels.append(text)
                break
        else:
            groups.append(((x, y), [text]))
    return groups


def _plot_best_so_far(path: Path, study: optuna.Study, baselines: list[str], budget: str) -> Path:
    """Each complete trial's val bpc, the best so far, and the baselines' val bpc at the same budget."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure("trial", "val bpc", "Best so far vs trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = sorted((t.number, t.values[0]) for t in complete)
    if done:
        xs, ys = zip(*done)
        best = [min(ys[:i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, s=12, color="0.6", label="trial")
        ax.step(xs, best, where="post", color="tab:blue", linewidth=2, label="best so far")
    at_budget = trials.baselines(study, budget)
    for i, name in enumerate(baselines):
        r = at_budget.get(name)
        if r and r.get("val_bpc") is not None:
            ax.axhline(r["val_bpc"], linestyle="--", linewidth=1, color=f"C{(i + 1) % 10}", label=name)
    return _save(fig, ax, path)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _csv(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
