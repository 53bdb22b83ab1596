"""Trials and results as MLflow run records: what each run's name, tags, params, metrics and files are.
No MLflow call (nas/tracking/tracker.py turns these records into runs).

A `cfg` here is the search's or nas-train's config, typed (nas.config's dataclasses) or a dict: every
function reads it through `config_dict`, so both spellings log the same params.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.provenance import short
from nas.trials import Outcome, TrialRecord
from nas.urls import redact

log = logging.getLogger("nas.tracking")

# The run's `state` tag, from the trial's finer outcome (its `nas_state` tag).
STATES = {"complete": "complete", "duplicate": "duplicate", "pruned": "pruned", "diverged": "diverged",
          "invalid": "failed", "error": "failed", "lost": "failed"}
_STATUS = {"complete": "FINISHED", "duplicate": "FINISHED", "pruned": "KILLED"}  # else FAILED


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain dicts and lists all the way down: a dataclass (nas.config.SearchApp, TrainApp,
    ...) through dataclasses.asdict, a mapping (a dict, an OmegaConf DictConfig) key by key, None as {}."""
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return _plain(cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RunRecord:
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


def trial_record(study_name: str, trial, cfg: Any) -> RunRecord:
    """The run of a finished Optuna trial (a FrozenTrial), read through its TrialRecord."""
    rec = TrialRecord.of(trial)
    fine = rec.outcome.value if rec.outcome is not None else (
        {"COMPLETE": Outcome.COMPLETE, "PRUNED": Outcome.PRUNED}.get(trial.state.name, Outcome.ERROR).value)
    state = STATES.get(fine, "failed")
    tags = {"role": "trial", "study": study_name, "trial": str(trial.number), "state": state,
            "nas_state": fine, "optuna_state": trial.state.name}
    for key in ("reason", "cell_hash", "budget", "duplicate_of", "retry_of", "run_dir", "reference",
                "cell_label", "code_version"):
        if getattr(rec, key) is not None:
            tags[key] = str(getattr(rec, key))
    if rec.reason:
        tags["mlflow.note.content"] = f"**{state}**: {rec.reason}"
    values = {**rec.metrics(), "cell_hash": rec.cell_hash, "budget": rec.budget}
    curve = rec.curve or sorted(trial.intermediate_values.items())
    start = trial.datetime_start or trial.datetime_complete
    end = trial.datetime_complete or start
    return RunRecord(
        name=rec.cell_label or f"trial {trial.number}", tags=tags, params=cell_params(values, cfg),
        status=_STATUS.get(state, "FAILED"),
        metrics=_metrics(values, curve, rec.train_curve or ()),
        start_ms=int(start.timestamp() * 1000) if start else now_ms(),
        end_ms=int(end.timestamp() * 1000) if end else now_ms(),
        cell_json=rec.cell_json, run_dir=rec.run_dir)


def result_record(name: str, result: dict[str, Any], cfg: Any, tags: dict[str, str]) -> RunRecord:
    """The run of an EvalResult dict (EvalResult.to_dict() + run_dir + budget): a baseline, a final
    retrain or a nas-train run. A result saved before the rename gives its divergence as "diverged"."""
    divergence = result.get("divergence", result.get("diverged"))
    state = "diverged" if divergence else "complete"
    tags = {**tags, "state": state, "nas_state": state, "cell_hash": result["cell_hash"],
            "budget": result["budget"], "seed": str(result["seed"]), "code_version": short()}
    if divergence:
        tags["reason"] = divergence
    if result.get("run_dir"):
        tags["run_dir"] = result["run_dir"]
    run_dir = result.get("run_dir")
    cell = Path(run_dir) / "cell.json" if run_dir else None
    end = now_ms()
    return RunRecord(
        name=name, tags=tags, params={**cell_params(result, cfg), "seed": str(result["seed"])},
        metrics=_metrics(result, result.get("curve") or (), result.get("train_curve") or ()),
        status="FAILED" if divergence else "FINISHED",
        start_ms=end - int(1000 * (result.get("seconds") or 0)), end_ms=end,
        cell_json=cell.read_text() if cell is not None and cell.is_file() else None, run_dir=run_dir)


def comparison_record(study_name: str, row, budget: str) -> RunRecord:
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
    now = now_ms()
    return RunRecord(
        name=f"final {row.label}", tags=tags,
        params={"cell_hash": row.cell_hash, "budget": budget,
                **({"param_count": str(row.params)} if row.params is not None else {})},
        metrics=tuple((k, _shown(k, float(v)), 0) for k, v in values.items() if finite(v)),
        status="FINISHED", start_ms=now, end_ms=now)


def cell_params(values: dict[str, Any], cfg: Any) -> dict[str, str]:
    """A run's params: the cell's hash, budget and sizes from `values`, the seed, space, controller and
    trainer settings from `cfg`."""
    cfg = config_dict(cfg)
    params = {"cell_hash": values.get("cell_hash"), "budget": values.get("budget"), "seed": cfg.get("seed"),
              **{name: values.get(key) for key, name in _CONSTANTS.items()},
              "search_space": (cfg.get("search_space") or {}).get("name"),
              "controller": (cfg.get("controller") or {}).get("name")}
    params = {k: v for k, v in params.items() if v is not None}
    return flatten({**params, "trainer": cfg.get("trainer") or {}})


def search_params(cfg: Any) -> dict[str, Any]:
    """The search run's params: the config without tracking and export, the storage password hidden."""
    out = {k: v for k, v in config_dict(cfg).items() if k not in ("tracking", "export")}
    storage = dict(out.get("storage") or {})
    if storage.get("url"):
        storage["url"] = redact(storage["url"])
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


def artifact_files(rec: RunRecord, tmp: Path) -> list[Path]:
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


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, JSON lists, values cut to 500 characters."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
        return out
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return {prefix.rstrip("."): text[:500]}


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def now_ms() -> int:
    return int(time.time() * 1000)
