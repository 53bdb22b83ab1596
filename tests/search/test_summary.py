"""The search at its own budget (nas.search.summary): counts and time by outcome, only new cells
ranked, the verdicts against the baselines; and the baselines that a trial already trained
(nas.search.baselines)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial

from nas.cell import known_cell
from nas.search.baselines import baselines_from_trials
from nas.search.summary import SearchOutcome, format_table, summarise


def new_cell():
    """A cell that is none of the reference cells."""
    from random_cells import random_cells

    from nas.cell import identify

    return next(c for c in random_cells(3, 30) if identify(c) is None)


def trial_attrs(spec, budget: str, **extra) -> dict:
    return {"cell_json": spec.to_json(), "cell_hash": spec.canonical_hash(), "budget": budget,
            "nas_state": "complete", "params": 1000, "hidden_size": 8, "chars_per_sec": 10.0, **extra}


def test_summary_counts_time_by_state_and_ranks_only_new_cells():
    study = optuna.create_study(study_name="s")
    cell = new_cell()
    study.add_trial(create_trial(value=1.5, user_attrs=trial_attrs(known_cell("mut3"), "b", seconds=10.0)))
    study.add_trial(create_trial(value=1.9, user_attrs=trial_attrs(cell, "b", seconds=20.0)))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged", "seconds": 5.0,
                                                                    "reason": "step 2: loss is nan"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "screened", "seconds": 0.2,
                                                                    "reason": "screen: nan"}))
    baselines = {"lstm": {"cell_hash": "h", "val_bpc": 2.0, "params": 1, "hidden_size": 1, "chars_per_sec": 1}}
    cfg = {"study": "s", "report": {"top_k": 3}}
    outcome = summarise(study, cfg, baselines, 40.0)
    assert [r.label for r in outcome.best] == ["trial 1 (new)"]
    assert outcome.states == {"complete": 2, "diverged": 1, "screened": 1}
    assert outcome.extra["seconds_by_state"] == {"complete": 30.0, "diverged": 5.0, "screened": 0.2}
    table = format_table(outcome)
    assert "trial 1 (new) beats lstm at the search budget (val bpc 1.9000 vs 2.0000, -0.1000; one seed)" in table
    assert "diverged 5 s (14%)" in table and "mut3" not in table
    empty = SearchOutcome("s", 0, {}, (), outcome.baselines, 1.0)
    assert "no new cell completed" in format_table(empty)


def test_baselines_that_a_trial_trained_are_not_trained_again():
    study = optuna.create_study()
    lstm = known_cell("lstm")
    study.add_trial(create_trial(value=1.7, user_attrs=trial_attrs(lstm, "B", run_dir="/r/0", seconds=3.0)))
    study.add_trial(create_trial(value=1.6, user_attrs=trial_attrs(known_cell("gru"), "other")))
    found = baselines_from_trials(study, ["lstm", "gru"], "B", seed=0)
    assert list(found) == ["lstm"]
    assert found["lstm"]["val_bpc"] == 1.7 and found["lstm"]["from_trial"] == 0
    assert found["lstm"]["cell_hash"] == lstm.canonical_hash() and found["lstm"]["run_dir"] == "/r/0"
