"""nas.tracking.connection and the Tracker's failure paths: an unreachable or deleted store is said once
and never raises into the search; a disabled tracker touches nothing."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import create_trial
from test_tracking import free_port

import nas.tracking.connection
from nas.tracking import Tracker, TrackingWarning


def test_unreachable_store_warns_once_and_never_raises(tmp_path):
    tracker = Tracker(f"http://127.0.0.1:{free_port()}", retries=1, timeout=2)
    study = optuna.create_study(study_name="offline")
    study.add_trial(create_trial(value=1.0, user_attrs={"nas_state": "complete"}))
    # How long this takes (bound 10 s): benchmarks/tracking_overhead.py's "unreachable" case.
    with pytest.warns(TrackingWarning, match="unreachable") as caught:  # noqa: PT031 - once for all calls
        tracker.start_search(study, {"seed": 0})
        tracker.log_trial(study, study.trials[0], {})
        tracker.log_baseline(study, "lstm", {"budget": "b", "cell_hash": "h", "seed": 0}, {})
        tracker.end_search(study)
    assert len([w for w in caught if w.category is TrackingWarning]) == 1


def test_disabled_tracking_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(nas.tracking.connection, "_mlflow", lambda: pytest.fail("MLflow used while disabled"))
    tracker = Tracker.from_config({"tracking": {"enabled": False}})
    study = optuna.create_study()
    tracker.start_search(study, {})
    tracker.end_search(study)
    assert not (tmp_path / "runs").exists()


def test_a_store_deleted_during_a_search_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setattr(nas.tracking.connection, "_warned", set())
    db = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}")
    db.write_bytes(b"")
    tracker._check_store()  # present: nothing to say
    db.unlink()
    with pytest.warns(TrackingWarning, match="was deleted during the search") as caught:
        tracker._check_store()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        tracker._check_store()  # said once only
    assert len(caught) == 1 and again == []
