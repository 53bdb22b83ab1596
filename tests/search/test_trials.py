"""nas.trials: the trial record reads back every attribute it writes, old studies load, and the
outcome strings are the ones studies store."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import nas
from nas import trials
from nas.trials import CellFacts, Outcome, TrialRecord

X = FloatDistribution(0, 1)


def test_outcomes_are_the_strings_studies_store():
    assert {o.name: o.value for o in Outcome} == {
        "COMPLETE": "complete", "DUPLICATE": "duplicate", "PRUNED": "pruned", "DIVERGED": "diverged",
        "INVALID": "invalid", "SCREENED": "screened", "ERROR": "error", "LOST": "lost"}
    assert Outcome.LOST == "lost" and f"{Outcome.PRUNED}" == "pruned"


def result(divergence=None):
    return SimpleNamespace(params=1234, hidden_size=16, steps=60, tokens=9000, seconds=3.5, chars_per_sec=2571.4,
                           train_bpc=2.5, val_bpc=2.25, divergence=divergence, curve=[(30, 2.5, 3.0), (60, 2.25, 4.0)],
                           train_curve=[(30, 2.6), (60, 2.4)])


def run_one(study, write):
    trial = study.ask()
    write(trial)
    study.tell(trial, 2.25)
    return TrialRecord.of(study.trials[-1])


def test_every_attribute_round_trips():
    study = optuna.create_study()
    facts = CellFacts(cell_hash="abc123", cell_json='{"name": "c"}', label="trial 0 = mut3",
                      equations=("i = sigmoid(a)", "h' = i"), budget="b16", code_version="nas-rnn 0.1.0",
                      reference="mut3")

    def write(trial):
        trials.write_cell(trial, facts)
        trials.write_run_dir(trial, "/runs/00000")
        trials.write_screen_seconds(trial, 0.25)
        trials.set_training(trial, True)
        trials.write_result(trial, result())

    r = run_one(study, write)
    assert (r.number, r.state, r.values, r.outcome, r.word) == (0, TrialState.COMPLETE, (2.25,), Outcome.COMPLETE,
                                                                 "complete")
    assert (r.cell, r.cell_label, r.cell_hash, r.cell_json, r.reference, r.budget, r.code_version) == (
        "mut3", "trial 0 = mut3", "abc123", '{"name": "c"}', "mut3", "b16", "nas-rnn 0.1.0")
    assert r.equations == ("i = sigmoid(a)", "h' = i") and r.training and r.run_dir == "/runs/00000"
    assert (r.params, r.hidden_size, r.steps, r.tokens, r.seconds, r.chars_per_sec, r.train_bpc, r.val_bpc) == (
        1234, 16, 60, 9000, 3.5, 2571.4, 2.5, 2.25)
    assert r.curve == ((30, 2.5, 3.0), (60, 2.25, 4.0)) and r.train_curve == ((30, 2.6), (60, 2.4))
    assert r.screen_seconds == 0.25 and r.divergence is None and r.reason is None
    assert r.duplicate_of is None and r.retry_of is None and not r.is_duplicate and not r.trained_nothing
    assert r.metrics() == {"params": 1234, "hidden_size": 16, "steps": 60, "tokens": 9000, "seconds": 3.5,
                           "chars_per_sec": 2571.4, "train_bpc": 2.5, "val_bpc": 2.25,
                           "curve": r.curve, "train_curve": r.train_curve, "run_dir": "/runs/00000"}
    # a new cell records no reference, and says "new"
    new = run_one(study, lambda t: trials.write_cell(t, dataclasses.replace(facts, reference=None)))
    assert new.reference is None and new.cell == "new"
    # every field of the record is one that this test wrote (a new field needs a line here)
    written = {f.name for f in dataclasses.fields(TrialRecord)}
    assert all(getattr(r, name) is not None for name in written - {
        "reason", "divergence", "duplicate_of", "retry_of"}), "a field the round trip does not cover"


def test_a_diverged_result_records_its_reason_and_outcome():
    r = run_one(optuna.create_study(), lambda t: trials.write_result(t, result("loss is nan at step 30")))
    assert (r.outcome, r.reason, r.divergence) == (Outcome.DIVERGED, "loss is nan at step 30", "loss is nan at step 30")


def test_a_study_written_before_the_rename_reads_its_divergence():
    old = create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged", "diverged": "loss is inf",
                                                          "reason": "loss is inf"})
    r = TrialRecord.of(old)
    assert r.divergence == "loss is inf" and r.outcome == Outcome.DIVERGED and r.is_reusable
    # a duplicate of it carries the reason under today's name
    study = optuna.create_study()
    study.add_trial(old)
    copy = run_one(study, lambda t: trials.mark_duplicate(t, study.trials[0]))
    assert copy.divergence == "loss is inf" and copy.duplicate_of == 0 and copy.is_duplicate


def test_old_baselines_read_their_divergence():
    study = optuna.create_study()
    study.set_user_attr("baseline:lstm:b1", {"val_bpc": 2.0, "diverged": None})
    trials.store_baseline(study, "gru", "b1", {"val_bpc": 1.9, "divergence": "x"})
    trials.store_baseline(study, "gru", "b2", {"val_bpc": 1.8, "divergence": None})
    assert trials.baselines(study, "b1") == {"lstm": {"val_bpc": 2.0, "divergence": None},
                                             "gru": {"val_bpc": 1.9, "divergence": "x"}}
    assert trials.baseline(study, "gru", "b2") == {"val_bpc": 1.8, "divergence": None}
    assert trials.baseline(study, "rnn", "b2") is None and set(trials.baselines(study)) == {"lstm", "gru"}


def test_marks_duplicates_and_retries():
    study = optuna.create_study()
    r = run_one(study, lambda t: trials.mark(t, Outcome.SCREENED, "loss is nan"))
    assert (r.outcome, r.reason, r.trained_nothing) == (Outcome.SCREENED, "loss is nan", True)
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions={"x": X},
                                 user_attrs={"nas_state": "lost"}))
    trials.enqueue_retry(study, study.trials[1])
    retry = run_one(study, lambda t: t.suggest_float("x", 0, 1))
    assert retry.retry_of == 1 == retry.first_try and study.trials[2].params == {"x": 0.5}
    assert TrialRecord.of(study.trials[1]).is_lost and TrialRecord.of(study.trials[1]).first_try == 1
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions={"x": X},
                                 user_attrs={"nas_state": "lost", "retry_of": 1}))
    trials.enqueue_retry(study, study.trials[3])  # the retry of a retry names the first try
    assert run_one(study, lambda t: t.suggest_float("x", 0, 1)).retry_of == 1


def test_records_of_running_and_unmarked_trials():
    study = optuna.create_study()
    running = study.ask()
    trials.set_training(running, True)
    live = TrialRecord.of(running)
    assert (live.state, live.outcome, live.values, live.training, live.word) == (
        TrialState.RUNNING, None, None, True, "running")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "something new"}))
    assert [r.word for r in trials.records(study)] == ["running", "fail"]


def test_study_attributes():
    study = optuna.create_study()
    assert trials.stored_config(study) is None and trials.parent_run(study) is None
    trials.store_config(study, {"study": "s", "trainer": {"steps": 3}})
    trials.set_parent_run(study, "run123")
    trials.store_versions(study, {"nas": "0.1"})
    trials.store_final_result(study, "h", 2, "b", {"test_bpc": 1.5})
    assert trials.stored_config(study) == {"study": "s", "trainer": {"steps": 3}}
    assert trials.parent_run(study) == "run123" and study.user_attrs["nas:versions"] == {"nas": "0.1"}
    assert trials.final_result(study, "h", 2, "b") == {"test_bpc": 1.5}
    assert trials.final_result(study, "h", 3, "b") is None
    assert set(study.user_attrs) == {"nas:config", "mlflow:parent_run_id", "nas:versions", "final:h:2:b"}


@pytest.mark.parametrize("module", ["nas.trials"])
def test_the_record_imports_no_torch_and_nothing_above_the_cell(module):
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == 'torch' or m.startswith('nas.') "
            "and not m.startswith(('nas.cell', 'nas.trials'))]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_record_touches_attributes():
    """Trial and study attributes are read and written through nas.trials alone (the adapter's
    storage-level writer is what nas.trials writes through for trials run elsewhere)."""
    root = Path(nas.__file__).parent
    pattern = re.compile(r"\buser_attrs\b|\bset_user_attr\(|\[[\"']nas_state[\"']\]|get\([\"']nas_state")
    allowed = {"trials.py", "optuna_adapter.py"}
    offenders = [f"{path.relative_to(root.parent)}:{n}" for path in sorted(root.rglob("*.py"))
                 if path.name not in allowed
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
