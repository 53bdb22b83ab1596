"""nas.tracking.records: run records from trials and results, whatever spelling the config comes in."""

from __future__ import annotations

from nas.config import SearchApp, TrainApp
from nas.tracking import Tracker
from nas.tracking.records import cell_params, config_dict, result_record, search_params

RESULT = {"cell_hash": "c2-x", "budget": "b", "seed": 0, "steps": 6, "val_bpc": 3.0, "params": 100,
          "curve": [[3, 3.5], [6, 3.0]]}


def test_a_typed_config_logs_the_params_of_its_dict():
    typed = SearchApp()
    as_dict = config_dict(typed)
    assert isinstance(as_dict, dict) and as_dict["trainer"]["steps"] == typed.trainer.steps
    assert config_dict(as_dict) == as_dict and config_dict(None) == {}
    assert cell_params(RESULT, typed) == cell_params(RESULT, as_dict)
    assert search_params(typed) == search_params(as_dict)
    assert cell_params(RESULT, TrainApp())["trainer.steps"] == str(TrainApp().trainer.steps)


def test_the_tracker_reads_its_settings_from_a_typed_config():
    app = TrainApp()
    app.tracking.enabled = False
    app.tracking.uri = "sqlite:///unused.db"
    tracker = Tracker.from_config(app)
    assert not tracker.enabled and tracker.uri == "sqlite:///unused.db"


def test_a_result_saved_before_the_rename_still_says_it_diverged():
    for key in ("divergence", "diverged"):  # "diverged": result.json files written before the rename
        rec = result_record("train x", {**RESULT, key: "step 4: loss is nan"}, {}, {"role": "train"})
        assert rec.status == "FAILED" and rec.tags["state"] == "diverged"
        assert rec.tags["reason"] == "step 4: loss is nan"
    rec = result_record("train x", {**RESULT, "divergence": None}, {}, {"role": "train"})
    assert rec.status == "FINISHED" and "reason" not in rec.tags
