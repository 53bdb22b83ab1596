"""Trials and results as MLflow run records: pure functions, no MLflow call (those are all in
nas/tracking.py, which turns these records into runs).
"""

from __future__ import annotations

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



_FINAL_METRICS = ("val_bpc", "train_bpc", "test_bpc", "params", "hidden_size", "chars_per_sec", "seconds",
                  "tokens", "steps")


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
    state = "diverged" if result.get("diverged") else "complete"
    from nas.provenance import short

    tags = {**tags, "state": state, "nas_state": state, "cell_hash": result["cell_hash"],
            "budget": result["budget"], "seed": str(result["seed"]), "code_version": short()}
    if result.get("diverged"):
        tags["reason"] = result["diverged"]
    if result.get("run_dir"):
        tags["run_dir"] = result["run_dir"]
    run_dir = result.get("run_dir")
    cell = Path(run_dir) / "cell.json" if run_dir else None
    end = _now_ms()
    return _RunRecord(
        name=name, tags=tags, params={**_cell_params(result, cfg), "seed": str(result["seed"])},
        metrics=_metrics(result, result.get("curve") or (), result.get("train_curve") or ()),
        status="FAILED" if result.get("diverged") else "FINISHED",
        start_ms=end - int(1000 * (result.get("seconds") or 0)), end_ms=end,
        cell_json=cell.read_text() if cell is not None and cell.is_file() else None, run_dir=run_dir)


def _cell_params(values: dict[str, Any], cfg: dict[str, Any]) -> dict[str, str]:
    params = {"cell_hash": values.get("cell_hash"), "budget": values.get("budget"), "seed": cfg.get("seed"),
              "hidden_size": values.get("hidden_size"), "param_count": values.get("params"),
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
    last = int(values.get("steps") or (curve[-1][0] if curve else 0))
    out += [(k, values[k], last) for k in _FINAL_METRICS if isinstance(values.get(k), (int, float))]
    return tuple(out)


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
