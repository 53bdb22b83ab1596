"""Trials and results as MLflow run records, the experiment's saved views and their links, and the
re-pointing of a moved local store: no MLflow call (those are all in nas/tracking/__init__.py, which turns
these records into runs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("nas.tracking")

# The state vocabulary, from the objective's finer `nas_state`.
STATES = {"complete": "complete", "duplicate": "duplicate", "pruned": "pruned", "diverged": "diverged",
          "invalid": "failed", "error": "failed", "lost": "failed"}
_STATUS = {"complete": "FINISHED", "duplicate": "FINISHED", "pruned": "KILLED"}  # else FAILED


def _redact(uri: str) -> str:
    from nas.urls import redact

    return redact(uri)


@dataclass(frozen=True)
class _RunRecord:
    """One MLflow run to write: everything but the ids, built from a trial or a result (no I/O)."""

    name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: tuple[tuple[str, float, int], ...]   # (key, value, step)
    status: str                                     # FINISHED | KILLED | FAILED
    start_ms: int
    end_ms: int
    cell_json: str | None = None
    run_dir: str | None = None


# Results are metrics (one name across runs: MLflow's charts put every run's value in one chart);
# numbers fixed by the budget (hidden size, parameter count, steps, tokens) are params.
_FINAL_METRICS = ("val_bpc", "train_bpc", "test_bpc", "chars_per_sec", "seconds")
_CONSTANTS = {"hidden_size": "hidden_size", "params": "param_count", "steps": "steps", "tokens": "tokens"}


def _trial_record(study_name: str, trial, cfg: dict[str, Any]) -> _RunRecord:
    ua = trial.user_attrs
    fine = ua.get("nas_state") or {"COMPLETE": "complete", "PRUNED": "pruned"}.get(trial.state.name, "error")
    state = STATES.get(fine, "failed")
    tags = {"role": "trial", "study": study_name, "trial": str(trial.number), "state": state,
            "nas_state": fine, "optuna_state": trial.state.name}
    for key in ("reason", "cell_hash", "budget", "duplicate_of", "retry_of", "run_dir", "reference",
                "cell_label", "code_version"):
        if ua.get(key) is not None:
            tags[key] = str(ua[key])
    if ua.get("reason"):
        tags["mlflow.note.content"] = f"**{state}**: {ua['reason']}"
    curve = ua.get("curve") or sorted(trial.intermediate_values.items())
    start = trial.datetime_start or trial.datetime_complete
    end = trial.datetime_complete or start
    return _RunRecord(
        name=ua.get("cell_label") or f"trial {trial.number}", tags=tags, params=_cell_params(ua, cfg),
        status=_STATUS.get(state, "FAILED"),
        metrics=_metrics(ua, curve, ua.get("train_curve") or ()),
        start_ms=int(start.timestamp() * 1000) if start else _now_ms(),
        end_ms=int(end.timestamp() * 1000) if end else _now_ms(),
        cell_json=ua.get("cell_json"), run_dir=ua.get("run_dir"))


def _result_record(name: str, result: dict[str, Any], cfg: dict[str, Any],
                   tags: dict[str, str]) -> _RunRecord:
    state = "diverged" if result.get("divergence") else "complete"
    from nas.provenance import short

    tags = {**tags, "state": state, "nas_state": state, "cell_hash": result["cell_hash"],
            "budget": result["budget"], "seed": str(result["seed"]), "code_version": short()}
    if result.get("divergence"):
        tags["reason"] = result["divergence"]
    if result.get("run_dir"):
        tags["run_dir"] = result["run_dir"]
    run_dir = result.get("run_dir")
    cell = Path(run_dir) / "cell.json" if run_dir else None
    end = _now_ms()
    return _RunRecord(
        name=name, tags=tags, params={**_cell_params(result, cfg), "seed": str(result["seed"])},
        metrics=_metrics(result, result.get("curve") or (), result.get("train_curve") or ()),
        status="FAILED" if result.get("divergence") else "FINISHED",
        start_ms=end - int(1000 * (result.get("seconds") or 0)), end_ms=end,
        cell_json=cell.read_text() if cell is not None and cell.is_file() else None, run_dir=run_dir)


def _comparison_record(study_name: str, row, budget: str) -> _RunRecord:
    """One cell of the final comparison (a ComparisonRow): its mean test bpc over the seeds, as one
    run per cell, so MLflow's chart of `test_bpc` has one bar per cell. A later report with more
    seeds logs the new means later at the same step 0, which MLflow then shows as the latest."""
    tags = {"role": "comparison", "study": study_name, "cell": row.label, "subject": row.role,
            "cell_hash": row.cell_hash, "budget": budget, "n_seeds": str(row.n_seeds),
            "state": "complete" if row.test_bpc is not None else "diverged"}
    if row.trial is not None:
        tags["trial"] = str(row.trial)
    values = {"test_bpc": row.test_bpc, "test_bpc_std": row.test_std, "val_bpc": row.val_bpc,
              "chars_per_sec": row.chars_per_sec}
    now = _now_ms()
    return _RunRecord(
        name=f"final {row.label}", tags=tags,
        params={"cell_hash": row.cell_hash, "budget": budget,
                **({"param_count": str(row.params)} if row.params is not None else {})},
        metrics=tuple((k, _shown(k, float(v)), 0) for k, v in values.items() if _finite(v)),
        status="FINISHED", start_ms=now, end_ms=now)


def _cell_params(values: dict[str, Any], cfg: dict[str, Any]) -> dict[str, str]:
    params = {"cell_hash": values.get("cell_hash"), "budget": values.get("budget"), "seed": cfg.get("seed"),
              **{name: values.get(key) for key, name in _CONSTANTS.items()},
              "search_space": (cfg.get("search_space") or {}).get("name"),
              "controller": (cfg.get("controller") or {}).get("name")}
    params = {k: v for k, v in params.items() if v is not None}
    return _flatten({**params, "trainer": cfg.get("trainer") or {}})


def _search_params(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in ("tracking", "export")}
    storage = dict(out.get("storage") or {})
    if storage.get("url"):
        storage["url"] = _redact(storage["url"])
    return {**out, "storage": storage}


def _metrics(values: dict[str, Any], curve, train_curve) -> tuple[tuple[str, float, int], ...]:
    out = [("curve/val_bpc", float(v), int(s)) for s, v in curve]
    out += [("curve/train_bpc", float(v), int(s)) for s, v in train_curve]
    # Final scores at step 0: MLflow charts a metric logged once per run as a bar per run.
    out += [(k, _shown(k, values[k]), 0) for k in _FINAL_METRICS if isinstance(values.get(k), (int, float))]
    return tuple(out)


def _shown(key: str, value: float) -> float:
    """A final score as the reports print it (bpc to 4 decimals): the runs table stays readable."""
    if not math.isfinite(value):
        return value
    return round(value, 4 if "bpc" in key else 1)


def _artifact_files(rec: _RunRecord, tmp: Path) -> list[Path]:
    """cell.json and cell.png (from the record's cell), sample.txt and result.json (from its run_dir)."""
    files = []
    if rec.cell_json:
        from nas.cell import CellSpec

        spec = CellSpec.from_json(rec.cell_json)
        (tmp / "cell.json").write_text(spec.to_json() + "\n")
        files.append(tmp / "cell.json")
        try:
            (tmp / "cell.png").write_bytes(_picture(spec))
            files.append(tmp / "cell.png")
        except Exception as e:  # noqa: BLE001 - a picture is not worth losing the run over
            log.debug("cannot draw the cell of %s: %s", rec.name, e)
    if rec.run_dir:
        files += [p for p in (Path(rec.run_dir) / n for n in ("sample.txt", "result.json")) if p.is_file()]
    return files


def _picture(spec) -> bytes:
    """The cell's PNG, drawn once per cell (~0.3 s): baselines and retrains share their pictures."""
    return _picture_of(spec.to_json(indent=None))


@functools.lru_cache(maxsize=256)
def _picture_of(cell_json: str) -> bytes:
    from nas.cell import CellSpec
    from nas.cell.draw import draw_cell

    with tempfile.TemporaryDirectory(prefix="nas-cell-") as tmp:
        return draw_cell(CellSpec.from_json(cell_json), Path(tmp) / "cell.png").read_bytes()


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, JSON lists, values cut to 500 characters."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
        return out
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return {prefix.rstrip("."): text[:500]}


def _safe_name(text: str, keep: str = "") -> str:
    """`text` with only the characters MLflow accepts in keys (and a path accepts in names)."""
    return re.sub(rf"[^\w.\-{re.escape(keep)}]", "_", text)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _now_ms() -> int:
    return int(time.time() * 1000)


# Saved views of the runs table, stored in the experiment as MLflow's own shared views are (the UI's
# "Share" button writes the same tags). "nas": every run, the scores as columns, every run in the
# charts (the UI default charts the first 10 only). "nas-compare": the final comparison, one run per
# cell, and its test_bpc chart. Opened by experiment_url(); MLflow 3.17 chooses between its GenAI and
# model-training views per browser, so the link also asks for the model-training one.
VIEWS = {
    "nas": {"selectedColumns": ["metrics.`test_bpc`", "metrics.`val_bpc`", "params.`param_count`",
                                "params.`hidden_size`", "tags.`state`", "tags.`reason`"],
            "runsHiddenMode": "SHOW_ALL"},
    "nas-compare": {"searchFilter": "tags.role = 'comparison'", "runsHiddenMode": "SHOW_ALL",
                    "selectedColumns": ["metrics.`test_bpc`", "metrics.`test_bpc_std`", "params.`param_count`",
                                        "tags.`n_seeds`"],
                    "chartsSearchFilter": "test_bpc", "hideEmptyCharts": True},
}
def experiment_url(base: str, experiment_id: str, view: str = "nas", charts: bool = False) -> str:
    """The MLflow UI's page of an experiment logged here (`base`: the server, http://127.0.0.1:5000), in
    the model-training view with one of the project's saved views ("nas": every run; "nas-compare":
    the final comparison), as the runs table or (`charts`) the chart view."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{url}&viewStateShareKey={view}" + ("&compareRunsMode=CHART" if charts else "")


def relocate_artifacts(uri: str) -> int:
    """Point a local store's runs at the artifacts folder next to its database, after `runs/` moved.

    MLflow records absolute artifact locations (file:///old/runs/mlflow/artifacts/<experiment>) and
    has no relative form, so a moved or copied `runs/` would show runs without their files. Every
    experiment laid out by this project (<root>/artifacts/<experiment>) whose root is not the one
    next to `uri`'s database is re-pointed, with its runs, in the database (sqlite3: no MLflow import).
    Returns the number of experiments re-pointed; 0 for a store that is not a local SQLite file.
    """
    if not uri.startswith("sqlite:///"):
        return 0
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return 0
    import sqlite3

    root = (db.resolve().parent / "artifacts").as_uri()
    moved = 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
            for exp_id, name, where in rows:
                old = _old_root(where or "", name)
                if old is None or old == root:
                    continue
                new = f"{root}/{_safe_name(name)}"
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                            (new, len(where) + 1, exp_id, len(where) + 1, f"{where}/"))
                moved += 1
    except sqlite3.Error as e:  # not an MLflow store yet (or locked): MLflow itself will say what is wrong
        log.debug("nas: cannot re-point artifacts in %s: %s", db, e)
        return 0
    if moved:
        log.info("nas: MLflow store %s moved: %d experiment(s) now find their artifacts in %s", db, moved, root)
    return moved


def _old_root(where: str, name: str) -> str | None:
    """The artifacts root of a location this project wrote (file:///<root>/<experiment>), else None."""
    suffix = f"/{_safe_name(name)}"
    if not where.startswith("file://") or not where.endswith(suffix):
        return None
    root = where[: -len(suffix)]
    return root if root.endswith("/artifacts") else None
