"""nas.search.optuna_adapter against the installed Optuna: every function, on each kind of storage
nas uses (in memory, journal file, SQLite). A new Optuna that breaks one of them fails here first."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileOpenLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

import nas
from nas.search import optuna_adapter as oa
from nas.search.journal import SafeJournalBackend

STORAGES = ("memory", "journal", "sqlite")


def make_study(kind: str, tmp_path) -> optuna.Study:
    storage = {"memory": lambda: None,
               "journal": lambda: JournalStorage(SafeJournalBackend(str(tmp_path / "journal.log"))),
               "sqlite": lambda: optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")}[kind]()
    return optuna.create_study(study_name="s", storage=storage)


@pytest.mark.parametrize("kind", STORAGES)
def test_claims_and_reads_trials(kind, tmp_path):
    study = make_study(kind, tmp_path)
    assert oa.pop_waiting(study) is None
    study.enqueue_trial({"x": 1.0}, skip_if_exists=False)
    study.enqueue_trial({}, skip_if_exists=False)
    first = oa.pop_waiting(study)
    assert isinstance(first, int)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.WAITING]
    fetched = oa.fetch(study, first)
    assert isinstance(fetched, FrozenTrial) and fetched.number == 0 and oa.trial_id(fetched) == first
    assert oa.fetch(study, fetched).number == 0 and oa.trial_id(optuna.Trial(study, first)) == first
    assert oa.enqueued_params(fetched) == {"x": 1.0}
    second = oa.fetch(study, oa.pop_waiting(study))
    assert oa.enqueued_params(second) == {} and oa.pop_waiting(study) is None
    assert [t.number for t in oa.all_trials(study)] == [0, 1]


@pytest.mark.parametrize("kind", STORAGES)
def test_writes_attrs_and_fails_trials(kind, tmp_path):
    study = make_study(kind, tmp_path)
    study.enqueue_trial({}, skip_if_exists=False)
    trial = oa.fetch(study, oa.pop_waiting(study))
    oa.set_system_attr(study, trial, "nas:worker", "host:1")
    oa.set_system_attr(study, oa.trial_id(trial), "nas:heartbeat", 5.0)
    oa.user_attr_writer(study, trial).set_user_attr("reason", "gone")
    now = oa.fetch(study, trial)
    assert now.system_attrs["nas:worker"] == "host:1" and now.system_attrs["nas:heartbeat"] == 5.0
    assert now.user_attrs == {"reason": "gone"}
    assert oa.fail(study, trial) is True and oa.fetch(study, trial).state == TrialState.FAIL
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        oa.fail(study, trial)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        oa.user_attr_writer(study, trial).set_user_attr("reason", "late")
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        oa.set_system_attr(study, trial, "nas:heartbeat", 6.0)


def test_draws_as_random_sampler_does_and_tests_membership():
    rng = np.random.default_rng(0)
    cases = [(CategoricalDistribution(["a", "b", None]), {"a", "b", None}),
             (IntDistribution(2, 8, step=2), {2, 4, 6, 8}),
             (IntDistribution(1, 64, log=True), set(range(1, 65)))]
    for d, values in cases:
        draws = {oa.uniform_draw(d, rng) for _ in range(400)}
        assert draws <= values and len(draws) > 2
        assert all(oa.contains(d, v) for v in values)
    floats = [oa.uniform_draw(FloatDistribution(1e-4, 1.0, log=True), rng) for _ in range(2000)]
    assert all(1e-4 <= f <= 1.0 for f in floats) and 0.35 < np.mean(np.array(floats) < 1e-2) < 0.65  # log-uniform
    assert not oa.contains(IntDistribution(2, 8, step=2), 3) and not oa.contains(IntDistribution(2, 8), "x")
    assert not oa.contains(CategoricalDistribution(["a"]), "z") and not oa.contains(FloatDistribution(0, 1), 2.0)


def test_journal_lock_and_rereading(tmp_path):
    path = str(tmp_path / "journal.log")
    lock = JournalFileOpenLock(path, grace_period=5)
    with oa.journal_lock(lock):
        assert (tmp_path / "journal.log.lock").exists()
    assert not (tmp_path / "journal.log.lock").exists()
    backend = SafeJournalBackend(path)
    record = {"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}
    backend.append_logs([record, {**record, "study_name": "t"}])
    assert [r["study_name"] for r in backend.read_logs(0)] == ["s", "t"]
    # rewritten under the backend (as nas.search.journal's repair does), the first line now longer
    backend2 = SafeJournalBackend(path + ".2")
    backend2.append_logs([{**record, "study_name": "a longer name"}, {**record, "study_name": "u"}])
    (tmp_path / "journal.log").write_bytes((tmp_path / "journal.log.2").read_bytes())
    oa.forget_read_positions(backend)
    assert [r["study_name"] for r in backend.read_logs(1)] == ["u"]


# Optuna's private names that nas uses; only the adapter may spell them.
PRIVATE = re.compile(r"\bstudy\._storage\b|\._trial_id\b|_pop_waiting_trial_id|\boptuna\._|journal\._file\b"
                     r"|\._study_id\b|_log_number_offset|\._contains\(|_is_multi_objective|_SearchSpaceTransform")


def test_only_the_adapter_uses_optunas_private_api():
    root = Path(nas.__file__).parent
    offenders = [f"{path.relative_to(root.parent)}:{n}" for path in sorted(root.rglob("*.py"))
                 if path.name != "optuna_adapter.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert offenders == []
