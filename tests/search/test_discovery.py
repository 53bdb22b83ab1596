"""What a search hands the user: the best *new* cell (never a reference cell unless asked), what a study
without a result did, and the code version on every record. (The summary by state and baselines a
trial already trained: tests/search/test_summary.py; paired intervals against the baselines:
tests/search/test_report.py; one trial's own behaviour: tests/search/test_objective.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from test_objective import new_cell

from nas.cell import known_cell
from nas.search.results import ResultError, best_trial


def test_best_trial_is_the_best_new_cell():
    study = optuna.create_study()
    gru = known_cell("gru")
    study.add_trial(create_trial(value=1.5, user_attrs={"cell_json": gru.to_json(), "nas_state": "complete"}))
    with pytest.raises(ResultError, match=r"trial 0 = gru, a reference cell \(export it with trial=0\)"):
        best_trial(study)
    assert best_trial(study, new_only=False).number == 0
    cell = new_cell()
    study.add_trial(create_trial(value=1.9, user_attrs={"cell_json": cell.to_json(), "nas_state": "complete"}))
    assert best_trial(study).number == 1


def test_a_study_without_a_completed_trial_says_what_its_trials_did():
    study = optuna.create_study(study_name="s")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.ask()
    with pytest.raises(ResultError, match=r"study 's' has no completed trial yet \(2 diverged, 1 fail, 1 running\)"):
        best_trial(study)


def test_versions_name_the_code_and_libraries():
    from nas.provenance import versions

    v = versions()
    assert set(v) >= {"nas_rnn", "git_commit", "git_dirty", "torch", "optuna", "mlflow", "python"}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        assert v["git_commit"] == head.strip() and v["git_dirty"] in ("true", "false")
    assert v["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]


