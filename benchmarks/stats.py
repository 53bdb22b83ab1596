"""Shared pieces of the search-trust benchmarks (fidelity.py, controllers.py): rank statistics with
bootstrap intervals, paired differences, best-so-far curves, the resumable JSONL cache, the search's
composed config, and the machine record every result JSON carries.

Nothing here imports torch; numpy and scipy are imported where used.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ---- rank agreement --------------------------------------------------------------------------------

def rank_agreement(x: Sequence[float], y: Sequence[float], resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau-b of paired scores, each with a percentile bootstrap 95% interval
    over the pairs (cells resampled with replacement, `resamples` times, numpy seeded with `seed`).

    Resamples in which either side is constant have no correlation and are dropped; `resamples_used`
    says how many remained. Fewer than 3 pairs: every number is None."""
    import numpy as np
    from scipy import stats

    if len(x) != len(y):
        raise ValueError(f"rank_agreement: expected paired scores, got {len(x)} and {len(y)} values")
    n = len(x)
    out: dict[str, Any] = {"n": n, "spearman": None, "spearman_ci95": None, "kendall": None,
                           "kendall_ci95": None, "resamples_used": 0}
    if n < 3:
        return out
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out["spearman"] = _finite(stats.spearmanr(a, b).statistic)
    out["kendall"] = _finite(stats.kendalltau(a, b).statistic)
    rng = np.random.default_rng(seed)
    rhos, taus = [], []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if np.ptp(a[idx]) == 0 or np.ptp(b[idx]) == 0:
            continue
        rhos.append(stats.spearmanr(a[idx], b[idx]).statistic)
        taus.append(stats.kendalltau(a[idx], b[idx]).statistic)
    if rhos:
        out["spearman_ci95"] = [round(float(v), 4) for v in np.percentile(rhos, [2.5, 97.5])]
        out["kendall_ci95"] = [round(float(v), 4) for v in np.percentile(taus, [2.5, 97.5])]
    out["resamples_used"] = len(rhos)
    return out


def _finite(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None


def top_k_overlap(short: dict[str, float], long: dict[str, float], k: int = 5) -> dict[str, Any]:
    """How many of the k best cells (lowest score) by `long` are also among the k best by `short`."""
    common = sorted(set(short) & set(long))
    k = min(k, len(common))
    best_short = sorted(common, key=lambda c: short[c])[:k]
    best_long = sorted(common, key=lambda c: long[c])[:k]
    return {"k": k, "overlap": len(set(best_short) & set(best_long)), "top_short": best_short,
            "top_long": best_long}


def cut_survival(rung: dict[str, float], long: dict[str, float], reduction_factor: int = 3,
                 ks: Sequence[int] = (3, 5)) -> dict[str, Any]:
    """Successive halving's cut at one rung, and what it does to the cells that are good in the end.

    The cut keeps the n // reduction_factor cells (at least 1) with the lowest `rung` score, among the
    n cells scored by both `rung` and `long`: Optuna's SuccessiveHalvingPruner promotes a trial whose
    value is at most the (n // rf)-th best of the values at its rung, so once every trial has reported
    there this is its cut (ties at the boundary, which it would also keep, are broken by name here).
    For each k in `ks`: how many of the k best cells by `long` survive the cut, and that as a rate."""
    if reduction_factor < 2:
        raise ValueError(f"cut_survival: expected a reduction factor >= 2, got {reduction_factor}")
    common = sorted(set(rung) & set(long))
    keep = max(1, len(common) // reduction_factor)
    kept = sorted(common, key=lambda c: (rung[c], c))[:keep]
    best_long = sorted(common, key=lambda c: (long[c], c))
    out: dict[str, Any] = {"n": len(common), "kept": keep if common else 0, "survivors": kept}
    for k in ks:
        top = best_long[:k]
        hit = len(set(top) & set(kept))
        out[f"top{k}"] = {"k": len(top), "survive": hit, "rate": round(hit / len(top), 4) if top else None}
    return out


def seed_spread_vs_gaps(per_cell: dict[str, Sequence[float]]) -> dict[str, float | None]:
    """Seed noise against the differences the ranking must resolve: the mean over cells of the sample
    std over seeds, and the median gap between adjacent cells once their seed means are sorted. A
    spread well below the gap means seeds rarely swap neighbours."""
    import numpy as np

    stds = [float(np.std(v, ddof=1)) for v in per_cell.values() if len(v) >= 2]
    means = sorted(float(np.mean(v)) for v in per_cell.values() if len(v) >= 1)
    gaps = np.diff(means)
    return {"seed_std_mean": round(float(np.mean(stds)), 5) if stds else None,
            "adjacent_gap_median": round(float(np.median(gaps)), 5) if len(gaps) else None}


# ---- search curves -----------------------------------------------------------------------------------

def best_so_far(values: Sequence[float | None]) -> list[float | None]:
    """Running minimum of per-trial scores; None (a failed or pruned trial) leaves it unchanged."""
    out, best = [], None
    for v in values:
        if v is not None and math.isfinite(v) and (best is None or v < best):
            best = v
        out.append(best)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of a - b over pairs (search seeds) with a Student-t 95% interval; None below 2 pairs.
    Negative means `a` found lower (better) val bpc."""
    import numpy as np
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean_diff": round(float(d.mean()), 5) if n else None, "ci95": None}
    if n >= 2:
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        out["ci95"] = [round(float(d.mean() - half), 5), round(float(d.mean() + half), 5)]
        out["excludes_zero"] = bool(out["ci95"][1] < 0 or out["ci95"][0] > 0)
    return out


# ---- resumable cache -----------------------------------------------------------------------------------

class JsonlCache:
    """Finished units of work, one JSON object per line, keyed by the record's `key` field. Appended
    and flushed per record, so a killed run loses at most the unit in progress; a torn last line (the
    kill came mid-write) is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, record: dict[str, Any]) -> None:
        if "key" not in record:
            raise ValueError(f"JsonlCache.add: expected a record with a 'key' field, got {sorted(record)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self.records[record["key"]] = record


# ---- configuration and provenance -----------------------------------------------------------------------

def search_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """conf/search.yaml composed as `nas-search` composes it (schema-checked), as a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import nas.cli.search  # noqa: F401 - registers the search schema
    from nas.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def machine() -> dict[str, Any]:
    """Where and with what a result was measured."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "optuna", "numpy", "scipy", "nas-rnn"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"host": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(_git("status", "--porcelain"))}


def _git(*args: str) -> str | None:
    """A read-only git query's output in the repository (None without git or outside a checkout)."""
    try:
        run = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (run.stdout.strip() or None) if run.returncode == 0 else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def save_figure(fig, path: Path) -> None:
    """Lay out, write (creating the folder) and close a pyplot figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
