"""What a search hands the user: reference cells named, no cell trained twice, screened cells, the best
*new* cells, paired intervals against the baselines, and the code version on every record."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from random_cells import random_cells

from nas.cell import known_cell
from nas.config import TrainConfig
from nas.search import objective as objective_module
from nas.search.objective import Objective, budget_key
from nas.search.report import Comparison, ComparisonRow, PairedDifference, paired_difference
from nas.search.results import ResultError, best_trial, label
from nas.search.run import SearchOutcome, _baselines_from_trials, format_table, summarise
from nas.train import EvalResult


class Corpus:
    source_hash = "corpus-for-tests"


def fake_result(spec, val: float | None = 2.0, diverged: str | None = None) -> EvalResult:
    return EvalResult(cell_hash=spec.canonical_hash(), cell_name=spec.name, params=1000, hidden_size=8,
                      steps=6, tokens=100, seconds=1.5, chars_per_sec=50.0, train_bpc=val, val_bpc=val,
                      test_bpc=None, divergence=diverged, device="cpu", seed=0, curve=((3, 2.5), (6, val or 0)))


def make_objective(specs, evaluate, screen=None) -> Objective:
    """An objective whose space hands out `specs` in trial-number order."""
    def space(trial):
        return specs[trial.number]

    return Objective(space, TrainConfig(steps=6), Corpus(), 0, evaluate=evaluate, screen=screen)


def run(objective: Objective, n: int, pruner=None) -> optuna.Study:
    from nas.search.worker import _run_one

    study = optuna.create_study(pruner=pruner or optuna.pruners.NopPruner())
    for _ in range(n):
        trial = study.ask()
        state, value = _run_one(objective, trial)
        study.tell(trial, value, state=state)
    return study


def new_cell(seed: int = 0):
    """A random cell that is none of the reference cells."""
    from nas.cell import identify

    return next(c for c in random_cells(seed, 20) if identify(c) is None)


def test_reference_cells_are_named_and_new_cells_say_so():
    calls = []
    specs = [known_cell("gru"), new_cell()]
    study = run(make_objective(specs, lambda spec, *a, **k: calls.append(spec) or fake_result(spec)), 2)
    first, second = study.trials
    assert first.user_attrs["reference"] == "gru" and first.user_attrs["cell_label"] == "trial 0 = gru"
    assert "reference" not in second.user_attrs and second.user_attrs["cell_label"] == "trial 1 (new)"
    assert label(first) == "trial 0 = gru" and label(second) == "trial 1 (new)"
    assert first.user_attrs["code_version"].startswith("nas-rnn ")


def test_a_cell_is_trained_once_whatever_its_first_outcome():
    """Complete, diverged, screened and pruned cells each come back as duplicates, never retrained."""
    cells = [new_cell(s) for s in range(4)]
    trained = []

    def evaluate(spec, cfg, seed, corpus, callback=None, **kw):
        trained.append(spec.canonical_hash())
        if spec == cells[1]:
            return fake_result(spec, None, "step 3: training loss is nan")
        if spec == cells[3]:
            callback(3, 9.0)  # the pruner below stops it here
        return fake_result(spec)

    def screen(spec, cfg, corpus, seed):
        return "screen: loss is nan after 3 steps" if spec == cells[2] else None

    class PruneCellThree(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.last_step is not None and trial.intermediate_values.get(3) == 9.0

    specs = cells + cells
    study = run(make_objective(specs, evaluate, screen), 8, PruneCellThree())
    assert sorted(trained) == sorted({c.canonical_hash() for c in (cells[0], cells[1], cells[3])})
    states = [(t.state, t.user_attrs["nas_state"]) for t in study.trials]
    assert states[:4] == [(TrialState.COMPLETE, "complete"), (TrialState.FAIL, "diverged"),
                          (TrialState.FAIL, "screened"), (TrialState.PRUNED, "pruned")]
    assert states[4:] == [(TrialState.COMPLETE, "duplicate"), (TrialState.FAIL, "diverged"),
                          (TrialState.FAIL, "screened"), (TrialState.PRUNED, "pruned")]
    assert [t.user_attrs["duplicate_of"] for t in study.trials[4:]] == [0, 1, 2, 3]
    assert study.trials[7].intermediate_values == {3: 9.0}
    assert "screen: loss is nan" in study.trials[6].user_attrs["reason"]


def test_a_cell_being_trained_elsewhere_is_waited_for_then_reused(monkeypatch):
    monkeypatch.setattr(objective_module, "WAIT_POLL", 0.05)
    spec = new_cell()
    objective = make_objective([spec, spec], lambda *a, **k: pytest.fail("trained a cell in flight"))
    study = optuna.create_study()
    first = study.ask()  # "another worker" is training the cell in trial 0
    for key, value in (("cell_hash", spec.canonical_hash()), ("budget", objective.budget)):
        first.set_user_attr(key, value)
    second = study.ask()

    def finish():
        time.sleep(0.3)
        study.tell(first, 1.75)

    threading.Thread(target=finish).start()
    assert objective(second) == 1.75
    assert second.user_attrs["nas_state"] == "duplicate" and second.user_attrs["duplicate_of"] == 0


def test_screen_failure_costs_no_training():
    spec = new_cell()
    study = run(make_objective([spec], lambda *a, **k: pytest.fail("trained a screened cell"),
                               lambda *a: "screen: activations explode"), 1)
    (t,) = study.trials
    assert t.state == TrialState.FAIL and t.user_attrs["nas_state"] == "screened"
    assert t.user_attrs["screen_seconds"] >= 0


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
    found = _baselines_from_trials(study, ["lstm", "gru"], "B", seed=0)
    assert list(found) == ["lstm"]
    assert found["lstm"]["val_bpc"] == 1.7 and found["lstm"]["from_trial"] == 0
    assert found["lstm"]["cell_hash"] == lstm.canonical_hash() and found["lstm"]["run_dir"] == "/r/0"


def test_paired_difference_interval_and_verdicts():
    def res(*values):
        return [{"test_bpc": v} for v in values]

    # differences -0.10, -0.12, -0.08: mean -0.10, sd 0.02, t(0.975, 2) = 4.3027
    p = paired_difference("trial 3 (new)", "lstm", res(1.0, 1.1, 1.2), res(1.1, 1.22, 1.28))
    half = 4.302652729911275 * 0.02 / 3 ** 0.5
    assert p.n == 3 and p.mean == pytest.approx(-0.10)
    assert (p.low, p.high) == (pytest.approx(-0.10 - half), pytest.approx(-0.10 + half))
    assert p.verdict == "better"
    assert paired_difference("c", "b", res(1.2, 1.3, 1.25), res(1.0, 1.12, 1.06)).verdict == "worse"
    assert paired_difference("c", "b", res(1.0, 1.3), res(1.1, 1.2)).verdict == "not distinguishable"
    one = paired_difference("c", "b", res(1.0, None), res(1.1, 1.2))
    assert one.n == 1 and one.low is None and one.verdict == "not distinguishable"
    assert paired_difference("c", "b", res(None), res(1.0)).text() == "no paired seeds"


def test_comparison_says_whether_any_new_cell_beat_each_baseline():
    rows = (ComparisonRow("trial 3 (new)", "trial", "c-a", 1.20, 0.01, 3, 1.3, 1000, 1.0, trial=3),
            ComparisonRow("lstm", "baseline", "c-b", 1.30, 0.01, 3, 1.4, 1000, 1.0),
            ComparisonRow("gru", "baseline", "c-c", 1.21, 0.01, 3, 1.3, 1000, 1.0))
    pairs = (PairedDifference("trial 3 (new)", "lstm", 3, -0.1, -0.15, -0.05),
             PairedDifference("trial 3 (new)", "gru", 3, -0.01, -0.04, 0.02))
    c = Comparison("s", "b", (0, 1, 2), rows, (), pairs)
    assert c.verdicts() == [
        "lstm: beaten by trial 3 (new) (-0.1000 [-0.1500, -0.0500]).",
        "gru: no new cell beats it; closest: trial 3 (new), not distinguishable (-0.0100 [-0.0400, +0.0200]).",
    ]
    md = c.markdown()
    assert "| trial 3 (new) | lstm | 3 | -0.1000 [-0.1500, -0.0500] | better |" in md
    assert c.best() is rows[0]
    only_baselines = Comparison("s", "b", (0,), rows[1:], ())
    assert only_baselines.best() is None
    assert "No new cell was retrained" in only_baselines.verdicts()[0]


def test_versions_name_the_code_and_libraries():
    from nas.provenance import versions

    v = versions()
    assert set(v) >= {"nas_rnn", "git_commit", "git_dirty", "torch", "optuna", "mlflow", "python"}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        assert v["git_commit"] == head.strip() and v["git_dirty"] in ("true", "false")
    assert v["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]


def test_budget_key_is_shared_by_trials_and_baselines():
    cfg = TrainConfig(steps=6)
    assert budget_key(cfg, 0, "x") == budget_key(TrainConfig(steps=6, device="cpu"), 0, "x")
    assert budget_key(cfg, 0, "x") != budget_key(cfg, 1, "x")


def test_the_canonical_form_is_what_is_trained_and_recorded():
    """An Elman ReLU cell with an extra state `c` that nothing reads: trained and recorded as the
    one-state cell it is, so its score belongs to its hash."""
    from nas.cell import CellSpec

    spelled = CellSpec.from_dict({
        "state": ["h", "c"],
        "nodes": {"pre": {"op": "linear", "in": ["x", "h"]}, "act": {"op": "relu", "in": ["pre"]},
                  "keep": {"op": "tanh", "in": ["c"]}},
        "outputs": {"h": "act", "c": "keep"}})
    trained = []
    study = run(make_objective([spelled], lambda spec, *a, **k: trained.append(spec) or fake_result(spec)), 1)
    (t,) = study.trials
    assert trained[0].state == ("h",) and trained[0] == spelled.canonical()
    assert CellSpec.from_json(t.user_attrs["cell_json"]) == spelled.canonical()
    assert t.user_attrs["cell_hash"] == spelled.canonical_hash()


def test_trials_that_train_nothing_are_replaced_up_to_a_cap(monkeypatch):
    from nas.search import storage
    from nas.search.storage import counts_toward_budget, replace_if_free

    study = optuna.create_study()
    study.add_trial(create_trial(value=2.0, user_attrs={"nas_state": "complete"}))
    study.add_trial(create_trial(value=2.0, user_attrs={"nas_state": "duplicate", "duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "screened"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "lost"}))
    assert [counts_toward_budget(t) for t in study.trials] == [True, False, False, True, False]
    assert [replace_if_free(study, t) for t in study.trials[:5]] == [False, True, True, False, False]
    assert [t.state for t in study.trials[5:]] == [TrialState.WAITING] * 2  # two placeholders
    monkeypatch.setattr(storage, "MAX_TRIALS_FACTOR", 1)
    monkeypatch.setattr(storage, "MIN_TRIALS_CAP", 7)
    assert replace_if_free(study, study.trials[2]) is False  # 7 trials, 4 that count: at the cap
    monkeypatch.setattr(storage, "MIN_TRIALS_CAP", 8)
    assert replace_if_free(study, study.trials[2]) is True


def test_a_trial_is_never_pruned_at_its_last_step():
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    def evaluate(spec, cfg, seed, corpus, callback=None, **kw):
        callback(cfg.steps, 2.0)  # the final evaluation: training is over
        return fake_result(spec)

    study = run(make_objective([new_cell()], evaluate), 1, AlwaysPrune())
    assert study.trials[0].state == TrialState.COMPLETE
    study = run(make_objective([new_cell()], lambda spec, cfg, seed, corpus, callback=None, **kw:
                               callback(3, 2.0) or fake_result(spec)), 1, AlwaysPrune())
    assert study.trials[0].state == TrialState.PRUNED


def test_finalists_are_retrained_for_report_steps():
    from nas.search.report import final_config

    cfg = {"trainer": {"steps": 300, "lr": 0.01}, "report": {"steps": 600}}
    assert final_config(cfg)["trainer"] == {"steps": 600, "lr": 0.01}
    assert cfg["trainer"]["steps"] == 300  # the search's own config is untouched
    assert final_config({**cfg, "report": {"steps": None}})["trainer"]["steps"] == 300
