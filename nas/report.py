"""The final comparison: the best cells of a study against the baselines, on the test split, with seeds.

    final_comparison(study, cfg, tracker) -> Comparison

1. the top_k distinct best cells of the study (COMPLETE trials, duplicates skipped, by val bpc) and
   every baseline of cfg["baselines"];
2. each retrained with seeds seed, seed+1, ..., seed+S-1 at the study's budget (same trainer, data
   and parameter budget as the search) and scored on the test split; each retrain is cached in the
   study (user attr final:<cell hash>:<seed>:<budget>), so a rerun or `nas-report` reuses it, and
   logged as an MLflow run with role=final;
3. mean +- std of the test bpc per cell (sample std over the seeds that did not diverge), as a table
   (Comparison.markdown(), .csv()) and plots in <out_dir>/report/: val-bpc learning curves (mean
   over seeds) of the top cells vs the baselines, test bpc vs parameter count, best-so-far vs trial.

With cfg["workers"] > 1 the retrains run in a process pool of that size (spawn, one torch thread
each); results are the same as in one process, since every retrain is seeded.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

log = logging.getLogger("nas.report")


@dataclass(frozen=True)
class ComparisonRow:
    """One cell of the comparison: a searched cell (role "trial") or a baseline."""

    label: str
    role: str
    cell_hash: str
    test_bpc: float | None          # mean over the seeds that did not diverge; None if all diverged
    test_std: float | None
    n_seeds: int                    # seeds with a test score
    val_bpc: float | None
    params: int | None
    chars_per_sec: float | None
    diverged: int = 0               # seeds that diverged
    trial: int | None = None


@dataclass(frozen=True)
class Comparison:
    study: str
    budget: str
    seeds: tuple[int, ...]
    rows: tuple[ComparisonRow, ...]     # best test bpc first
    files: tuple[str, ...]              # comparison.md, comparison.csv and the plots in out_dir/report

    def best(self) -> ComparisonRow | None:
        return self.rows[0] if self.rows and self.rows[0].test_bpc is not None else None

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
        return (f"Study `{self.study}`: test bits per character, seeds {seeds}, budget `{self.budget}`.\n\n"
                + "\n".join(lines) + "\n")

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


def final_comparison(study: optuna.Study, cfg: dict[str, Any], tracker=None,
                     progress: bool = False) -> Comparison:
    """Retrain the top cells and the baselines with S seeds on the test split; write the table and
    plots to <out_dir>/report/ (the caller logs them: tracker.log_comparison)."""
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.search.objective import budget_key

    trainer = TrainConfig(**{**cfg["trainer"], "progress": False})
    corpus = load_corpus(cfg["data"]["path"], cfg["data"]["cache_dir"])
    budget = budget_key(trainer, cfg["seed"], corpus.source_hash)
    baselines = _baselines(cfg["baselines"])
    subjects = top_cells(study, cfg["report"]["top_k"], exclude={b.hash for b in baselines}) + baselines
    seeds = tuple(cfg["seed"] + i for i in range(cfg["report"]["seeds"]))
    results = _retrain_all(study, cfg, subjects, seeds, budget, progress)
    if tracker is not None:
        for s in subjects:
            for seed in seeds:
                tracker.log_final(study, s.label, s.role, results[s.label, seed], cfg)
    rows = sorted((_row(s, [results[s.label, seed] for seed in seeds]) for s in subjects),
                  key=lambda r: (r.test_bpc is None, r.test_bpc or 0.0))
    out = Path(cfg["out_dir"]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    comparison = Comparison(study.study_name, budget, seeds, tuple(rows), ())
    (out / "comparison.md").write_text(comparison.markdown())
    (out / "comparison.csv").write_text(comparison.csv())
    plots = (_plot_curves(out / "learning_curves.png", subjects, seeds, results),
             _plot_test_vs_params(out / "test_bpc_vs_params.png", rows),
             _plot_best_so_far(out / "best_so_far.png", study, cfg["baselines"], budget))
    files = tuple(str(p) for p in (out / "comparison.md", out / "comparison.csv", *plots))
    return Comparison(study.study_name, budget, seeds, tuple(rows), files)


def top_cells(study: optuna.Study, k: int, exclude: set[str] = frozenset()) -> list[_Subject]:
    """The k best distinct cells of the study (COMPLETE, not duplicates), best first, leaving out the
    hashes in `exclude` (the baselines: a search seeded with them finds them again, and they are in
    the comparison anyway)."""
    from nas.search.results import scored_trials

    seen, out = set(exclude), []
    for t in scored_trials(study):
        if len(out) >= k:
            break
        if t.user_attrs.get("cell_hash") not in seen:
            seen.add(t.user_attrs.get("cell_hash"))
            out.append(_Subject(f"trial {t.number}", "trial", t.user_attrs["cell_json"], t.number))
    return out


def _baselines(names: list[str]) -> list[_Subject]:
    from nas.cell import known_cell

    return [_Subject(name, "baseline", known_cell(name).to_json(indent=None)) for name in names]


def _retrain_all(study, cfg, subjects, seeds, budget, progress) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (subject, seed) result: from the study's cache, else trained (in a pool if workers > 1)."""
    from nas.cell import CellSpec
    from nas.search.pool import TrainJob, run_jobs

    results, jobs = {}, []
    for s in subjects:
        h = CellSpec.from_json(s.cell_json).canonical_hash()
        for seed in seeds:
            cached = study.user_attrs.get(f"final:{h}:{seed}:{budget}")
            if cached is not None:
                results[s.label, seed] = cached
            else:
                run_dir = Path(cfg["out_dir"]) / "final" / f"{h}-s{seed}"
                jobs.append(TrainJob(s.label, s.cell_json, cfg, seed, str(run_dir.resolve()), budget))
    for job, data in zip(jobs, run_jobs(jobs, cfg, progress, "final comparison")):
        study.set_user_attr(f"final:{data['cell_hash']}:{job.seed}:{budget}", data)  # cached at once
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
        diverged=sum(1 for r in results if r.get("diverged")), trial=s.trial)


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
        for r in mine:
            ax.annotate(r.label, (r.params, r.test_bpc), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
    return _save(fig, ax, path)


def _plot_best_so_far(path: Path, study: optuna.Study, baselines: list[str], budget: str) -> Path:
    """Each complete trial's val bpc, the best so far, and the baselines' val bpc at the same budget."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure("trial", "val bpc", "Best so far vs trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = sorted((t.number, t.values[0]) for t in trials)
    if done:
        xs, ys = zip(*done)
        best = [min(ys[:i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, s=12, color="0.6", label="trial")
        ax.step(xs, best, where="post", color="tab:blue", linewidth=2, label="best so far")
    from nas.search.results import baselines as trained

    at_budget = trained(study, budget)
    for i, name in enumerate(baselines):
        r = at_budget.get(name)
        if r and r.get("val_bpc") is not None:
            ax.axhline(r["val_bpc"], linestyle="--", linewidth=1, color=f"C{(i + 1) % 10}", label=name)
    return _save(fig, ax, path)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _csv(v) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
