"""nas.tracking.views: links to the experiment's saved views."""

from __future__ import annotations

import pytest

import nas.tracking
from nas.tracking import Tracker


def test_experiment_url_opens_a_saved_view_in_the_model_training_view():
    url = nas.tracking.experiment_url("http://127.0.0.1:5000/", "3", "nas-compare", charts=True)
    assert url == ("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
                   "&viewStateShareKey=nas-compare&compareRunsMode=CHART")
    assert nas.tracking.experiment_url("http://h:1", "0").endswith("viewStateShareKey=nas")
    tracker = Tracker("sqlite:///unused.db")
    assert tracker.link("s") is None  # not logged by this tracker: no link, and no MLflow call
    tracker._experiment_ids["s"] = "7"
    assert tracker.link("s") == nas.tracking.experiment_url("http://127.0.0.1:5000", "7", "nas-compare", True)
    with pytest.raises(ValueError, match="view must be one of"):
        nas.tracking.experiment_url("http://h:1", "0", "compare")
