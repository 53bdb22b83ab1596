"""nas.search.objective: one trial, from the sampled cell to its score. Reference cells are named, the
canonical form is what is trained and recorded, no cell is trained twice at one budget (whatever its
first outcome, also while another worker trains it), screening costs no training, and a trial is
never pruned at its last step."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState
from random_cells import random_cells

from nas.cell import known_cell
from nas.config import TrainConfig
from nas.search import objective as objective_module
from nas.search.objective import Objective, budget_key
from nas.search.results import label
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
