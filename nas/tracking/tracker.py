"""The Tracker: a study's searches, trials, baselines, final comparison and `nas-train` runs, written to
MLflow (the package docstring shows the runs). Runs are written with MlflowClient and explicit run
ids (no active-run state: several workers and threads log at once), metrics in batches.

No method raises into the search (`_safe`). Nothing is buffered in memory while the store is down,
because the Optuna study already holds every result durably: `start_search` and `end_search` log the
finished trials that are missing from MLflow, so a later run (or `nas-report`) fills the gaps, even
after this process died.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from nas import trials
from nas.provenance import versions
from nas.tracking.connection import Unavailable, connection, request_error, warn_once
from nas.tracking.records import (
    RunRecord,
    artifact_files,
    comparison_record,
    config_dict,
    finite,
    flatten,
    now_ms,
    result_record,
    search_params,
    trial_record,
)
from nas.tracking.server import default_store, safe_name
from nas.tracking.views import EXPERIMENT_TAGS, GUIDE, TRAIN_GUIDE, experiment_url
from nas.urls import redact

log = logging.getLogger("nas.tracking")

PARENT_ATTR = trials.PARENT_RUN_ATTR  # the study attribute holding the search's run id


def _safe(method):
    """Public Tracker methods never raise into the search: an outage was already warned about;
    anything else (a bad value, a bug) is logged and skipped."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Unavailable:
            return None
        except Exception as e:  # noqa: BLE001 - tracking must not end a search
            log.warning("nas: MLflow %s failed: %s: %s", method.__name__, type(e).__name__, e)
            return None

    return wrapper


class Tracker:
    """Logs a study to MLflow; a disabled tracker (tracking.enabled=false) does nothing."""

    def __init__(self, uri: str | None = None, experiment: str | None = None, retries: int = 3,
                 timeout: float = 10.0, enabled: bool = True):
        self.enabled = enabled
        self.artifact_root = None
        if uri is None:
            uri, self.artifact_root = default_store()
        elif uri.startswith("sqlite:///"):
            self.artifact_root = (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
        self.uri, self.experiment = uri, experiment
        self._conn = connection(uri, retries, timeout) if enabled else None
        self._experiment_ids: dict[str, str] = {}
        self._parents: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> Tracker:
        """The tracker of a config's `tracking` section (a typed config or a dict)."""
        t = config_dict(cfg).get("tracking") or {}
        return cls(t.get("uri"), t.get("experiment"), t.get("retries", 3), t.get("timeout", 10.0),
                   t.get("enabled", True))

    # -- the search ----------------------------------------------------------------------------------

    @_safe
    def start_search(self, study, cfg: Any) -> None:
        """Get or create the study's experiment and its parent run (reused on resume), log the
        config, and log the finished trials that are missing (an earlier outage, a dead process)."""
        self._conn.reset()
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            if trials.parent_run(study) is not None and not db.exists():
                warn_once(f"nas: the MLflow store {db} is gone (deleted?) although study "
                           f"{study.study_name!r} logged runs to it: logging them all again")
        self._make_store_dir()
        exp = self._experiment_id(study.study_name)
        parent = self._parent_id(study)
        params = flatten(search_params(cfg))
        if parent is None:
            run = self._do("create_run", exp, run_name=f"search {study.study_name}",
                           tags={"role": "search", "study": study.study_name,
                                 **{f"version.{k}": v for k, v in versions().items()}})
            parent = run.info.run_id
            trials.set_parent_run(study, parent)
            self._parents[study.study_name] = parent
        else:
            self._do("update_run", parent, status="RUNNING")
            old = self._do("get_run", parent).data.params
            params = {k: v for k, v in params.items() if k not in old}  # params are write-once
        self._batch(parent, params=params)
        self._sync_trials(study, cfg)

    @_safe
    def log_trial(self, study, trial, cfg: Any) -> None:
        """A finished trial as a child run of the search (once: a logged trial is skipped)."""
        exp = self._experiment_id(study.study_name)
        if not self._logged(exp, "trial", study.study_name, trial=str(trial.number)):
            self._write(exp, trial_record(study.study_name, trial, cfg), None)

    @_safe
    def log_baseline(self, study, name: str, result: dict[str, Any], cfg: Any) -> None:
        """A baseline's result (EvalResult.to_dict() + run_dir + budget), once per budget."""
        exp = self._experiment_id(study.study_name)
        if self._logged(exp, "baseline", None, cell=name, budget=result["budget"]):
            return
        record = result_record(f"baseline {name}", result, cfg,
                                {"role": "baseline", "cell": name, "study": study.study_name})
        self._write(exp, record, None)

    @_safe
    def log_final(self, study, label: str, subject: str, result: dict[str, Any], cfg: Any) -> None:
        """One retrain of the final comparison (role=final; subject trial or baseline), once per
        cell, seed and budget."""
        exp = self._experiment_id(study.study_name)
        if self._logged(exp, "final", None, cell_hash=result["cell_hash"], seed=str(result["seed"]),
                        budget=result["budget"]):
            return
        tags = {"role": "final", "cell": label, "subject": subject, "study": study.study_name}
        cfg = config_dict(cfg)
        cfg = {**cfg, "trainer": {**(cfg.get("trainer") or {}), "test": True}}  # as retrained
        self._write(exp, result_record(f"final {label} seed {result['seed']}", result, cfg, tags), None)

    @_safe
    def log_comparison(self, study, comparison) -> None:
        """The comparison: one run per cell (role=comparison, mean `test_bpc` over the seeds, that
        cell's seed runs nested under it); on the search run the table (its description, and the
        experiment's), the verdicts as tags, and the files under report/."""
        parent = self._parent_id(study)
        if parent is None:
            return
        exp = self._experiment_id(study.study_name)
        cells = {row.cell_hash: self._comparison_run(exp, study.study_name, row, comparison.budget)
                 for row in comparison.rows}
        finals = self._do("search_runs", [exp], max_results=1000,
                          filter_string=f"tags.role = 'final' and tags.budget = '{comparison.budget}'")
        for run in finals:
            cell = cells.get(run.data.tags.get("cell_hash"))
            if cell is not None and run.data.tags.get("mlflow.parentRunId") != cell:
                self._do("set_tag", run.info.run_id, "mlflow.parentRunId", cell)
        best = comparison.best()
        table = comparison.markdown()
        tags = {"mlflow.note.content": table, "verdict": " ".join(comparison.verdicts())}
        for p in comparison.pairs:
            tags[f"paired/{safe_name(p.cell, keep=' /')}/{p.baseline}"] = f"{p.verdict}: {p.text()}"
        if best is not None:
            tags.update(best_cell=best.label, best_cell_hash=best.cell_hash)
        else:
            tags.update(best_cell="none: no new cell was retrained")
        self._batch(parent, tags=tags)
        self._do("set_experiment_tag", exp, "mlflow.note.content", f"{table}\n\n{GUIDE}"[:8000])
        for path in comparison.files:
            self._do("log_artifact", parent, str(path), "report")

    def _comparison_run(self, exp: str, study_name: str, row, budget: str) -> str:
        """The run of one compared cell at this budget: created once, its mean updated by later
        reports (metrics at step n_seeds)."""
        rec = comparison_record(study_name, row, budget)
        found = self._do("search_runs", [exp], max_results=10, filter_string=(
            f"tags.role = 'comparison' and tags.cell_hash = '{row.cell_hash}' and tags.budget = '{budget}'"))
        found = [r for r in found if r.data.tags.get("study") == study_name]
        if not found:
            return self._write(exp, rec, None)
        run_id = found[0].info.run_id
        self._batch(run_id, metrics=rec.metrics, tags=rec.tags)
        return run_id

    @_safe
    def end_search(self, study, outcome=None) -> None:
        """Log missing trials, the best-so-far curve and the trial counts; close the parent run."""
        parent = self._parent_id(study)
        if parent is None:
            return
        self._sync_trials(study, None)
        done = self._do("get_metric_history", parent, "best_val_bpc")
        after = max((m.step for m in done), default=-1)  # a resumed search extends the curve
        best, metrics = math.inf, []
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if t.state == TrialState.COMPLETE and t.values:
                best = min(best, t.values[0])
                if t.number > after:
                    metrics.append(("best_val_bpc", best, t.number))
        tags = {}
        if outcome is not None:  # counts and the wall time are tags: a one-run metric is a chart of one bar
            tags = {f"trials.{k}": str(v) for k, v in outcome.states.items()}
            tags.update({"trials.total": str(outcome.n_trials), "search_seconds": f"{outcome.seconds:.0f}"})
        self._batch(parent, metrics=metrics, tags=tags)
        self._do("set_terminated", parent, "FINISHED")

    # -- nas-train -----------------------------------------------------------------------------------

    @_safe
    def log_train(self, label: str, result: dict[str, Any], cfg: Any) -> str | None:
        """One `nas-train` run (role=train) in the experiment `tracking.experiment`, default
        "nas/train": the trainer settings, cell hash, budget, seed, hidden size and parameter count as
        params; the learning curves (curve/val_bpc, curve/train_bpc) and the final bpc as metrics; the
        cell (cell.json, cell.png), sample.txt and result.json as artifacts. `result` is
        EvalResult.to_dict() plus `run_dir` and `budget`. Returns the run id (None when not logged)."""
        self._conn.reset()
        self._make_store_dir()
        exp = self._experiment_id("train", note=TRAIN_GUIDE)
        record = result_record(f"train {label} seed {result['seed']}", result, cfg,
                                {"role": "train", "cell": label, "corpus": str(result.get("corpus"))})
        return self._write(exp, record, None)

    def link(self, study_name: str, base: str = "http://127.0.0.1:5000", view: str = "nas-compare",
             charts: bool = True) -> str | None:
        """The MLflow UI link of a study this tracker logged (nas-dashboard serves `base`), else None.
        No MLflow call: the experiment id is the one this tracker used."""
        exp = self._experiment_ids.get(study_name)
        return None if exp is None else experiment_url(base, exp, view, charts)

    # -- helpers -------------------------------------------------------------------------------------

    def _make_store_dir(self) -> None:
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def _check_store(self) -> None:
        """A local SQLite store deleted while a search runs: MLflow keeps writing to the unlinked file, so
        those runs are lost from view. Say so once; a rerun of the search logs them again."""
        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///"):]).exists():
            warn_once(f"nas: the MLflow store {self.uri[len('sqlite:///'):]} was deleted during the search; "
                       "runs logged from now on are lost with it: rerun the same command afterwards to log "
                       "every run again")

    def _do(self, method: str, *args, **kwargs):
        return self._conn.call(method, *args, **kwargs)

    def _experiment_id(self, study_name: str, note: str = GUIDE) -> str:
        """The experiment `tracking.experiment`, default "nas/<study_name>", created as a model
        training experiment with `note` as its description."""
        if study_name in self._experiment_ids:
            return self._experiment_ids[study_name]
        name = self.experiment or f"nas/{study_name}"
        wanted = {**EXPERIMENT_TAGS, "mlflow.note.content": note}
        if note is not GUIDE:  # nas-train's experiment has no final comparison
            del wanted["mlflow.sharedViewState.nas-compare"]
        exp = self._do("get_experiment_by_name", name)
        if exp is None:
            where = None
            if self.artifact_root is not None:
                where = f"{self.artifact_root}/{safe_name(name)}"
            try:
                exp_id = self._do("create_experiment", name, artifact_location=where,
                                  tags={"study": study_name, **wanted})
            except Exception as e:
                if getattr(e, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp_id = self._do("get_experiment_by_name", name).experiment_id  # another worker won
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                self._do("restore_experiment", exp_id)
            for key, value in wanted.items():  # an experiment from an earlier version
                if key not in exp.tags or (key != "mlflow.note.content" and exp.tags[key] != value):
                    self._do("set_experiment_tag", exp_id, key, value)
        self._experiment_ids[study_name] = exp_id
        return exp_id

    def _parent_id(self, study) -> str | None:
        """The search's parent run: from the study (shared by all workers), if it still exists."""
        if study.study_name in self._parents:
            return self._parents[study.study_name]
        run_id = trials.parent_run(study)
        if run_id is None:
            return None
        try:
            run = self._do("get_run", run_id)
        except Exception as e:
            if not request_error(e):
                raise
            return None  # another tracking store, or deleted: start_search makes a new one
        if run.info.lifecycle_stage == "deleted":
            return None
        self._parents[study.study_name] = run_id
        return run_id

    def _logged(self, exp: str, role: str, study_name: str | None, **tags: str) -> bool:
        """Whether a finished run with this role and these tags (names and hashes: no quotes) exists.
        A run left RUNNING was cut short by an outage: it is deleted, to be written again."""
        clauses = [f"tags.role = '{role}'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()]
        runs = self._do("search_runs", [exp], filter_string=" and ".join(clauses), max_results=100)
        runs = [r for r in runs if study_name is None or r.data.tags.get("study") == study_name]
        if any(r.info.status != "RUNNING" for r in runs):
            return True
        for r in runs:
            self._do("delete_run", r.info.run_id)
        return False

    def _sync_trials(self, study, cfg: Any) -> None:
        """Log every finished trial that has no finished run yet (one search for all of them)."""
        cfg = cfg or trials.stored_config(study) or {}
        exp = self._experiment_id(study.study_name)
        logged, token = set(), None
        while True:
            page = self._do("search_runs", [exp], filter_string="tags.role = 'trial'", max_results=1000,
                            page_token=token)
            logged |= {r.data.tags.get("trial") for r in page
                       if r.info.status != "RUNNING" and r.data.tags.get("study") == study.study_name}
            token = page.token
            if not token:
                break
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished() and str(t.number) not in logged:
                self.log_trial(study, t, cfg)

    def _write(self, exp: str, rec: RunRecord, parent: str | None) -> str:
        self._check_store()
        tags = dict(rec.tags)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        run = self._do("create_run", exp, start_time=rec.start_ms, run_name=rec.name)
        run_id = run.info.run_id
        self._batch(run_id, rec.params, rec.metrics, tags, rec.end_ms)
        with tempfile.TemporaryDirectory(prefix="nas-mlflow-") as tmp:
            for path in artifact_files(rec, Path(tmp)):
                self._do("log_artifact", run_id, str(path))
        self._do("set_terminated", run_id, rec.status, end_time=rec.end_ms)
        return run_id

    def _batch(self, run_id: str, params: dict[str, str] | None = None, metrics=(), tags=None,
               ms: int | None = None) -> None:
        """Params, metrics and tags in one log_batch; metrics that are not finite numbers are left out."""
        stamp = ms or now_ms()
        mets = [(k, float(v), stamp, int(step)) for k, v, step in metrics if finite(v)]
        ts = {k: str(v)[:8000] for k, v in (tags or {}).items()}
        if params or mets or ts:
            self._conn.log_batch(run_id, dict(params or {}), mets, ts)


def trial_of_run(tracking, run_id: str) -> tuple[str, int]:
    """(study name, trial number) of an MLflow trial run, for `nas-export run_id=...`.

    `tracking` is the tracking config (a TrackingConfig, a DictConfig or a dict)."""
    t = config_dict(tracking)
    tracker = Tracker(t.get("uri"), t.get("experiment"), 0, t.get("timeout", 10.0))
    try:
        tags = tracker._do("get_run", run_id).data.tags
    except Unavailable:
        raise ValueError(f"MLflow tracking at {redact(tracker.uri)} is unreachable") from None
    except Exception as e:
        if not request_error(e):
            raise
        raise ValueError(f"no MLflow run {run_id!r} in {redact(tracker.uri)}") from None
    if tags.get("role") != "trial" or "study" not in tags or not str(tags.get("trial", "")).isdigit():
        raise ValueError(f"MLflow run {run_id!r} is not a trial of a nas-search study "
                         f"(role={tags.get('role')!r})")
    return tags["study"], int(tags["trial"])
