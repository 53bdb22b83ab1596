"""The load test of one study with many workers (benchmarks/loadtest.py), small: 8 worker processes
run 40 trials through the project's worker loop while 2 of them are killed; on the journal file and,
where CI provides a server (NAS_TEST_POSTGRES_URL), on PostgreSQL. Also: its checks catch what they
are meant to catch."""

import importlib.util
import os
import uuid
from pathlib import Path

import optuna
import pytest

from nas.search.storage import make_storage, pop_trial

POSTGRES = os.environ.get("NAS_TEST_POSTGRES_URL")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loadtest.py"


@pytest.fixture(scope="module")
def loadtest():
    spec = importlib.util.spec_from_file_location("loadtest", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("storage", [
    "journal",
    pytest.param("postgresql", marks=pytest.mark.skipif(
        not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets NAS_TEST_POSTGRES_URL")),
])
def test_eight_workers_two_killed(loadtest, storage, tmp_path):
    argv = ["--workers", "8", "--trials", "40", "--kills", "2", "--dir", str(tmp_path),
            "--study", f"loadtest-{uuid.uuid4().hex[:8]}"]
    if storage == "postgresql":
        argv += ["--storage", POSTGRES, "--hosts", "2"]  # two "machines": reaped by pid or by heartbeat
    result = loadtest.run(loadtest.parse(argv))
    checks = result["checks"]
    assert checks["worker_errors"] == {}
    assert checks["counted_trials"] == checks["complete_trials"] == checks["logical_trials"] == 40
    assert checks["duplicate_claims"] == [] and checks["duplicate_results"] == []
    assert checks["lost_results"] == [] and checks["unfinished_trials"] == []
    assert result["kills"] == 2 and checks["killed_in_trial"] >= 1
    assert checks["failed_as_lost"] >= checks["killed_in_trial"] and checks["killed_not_retried"] == []
    assert checks["ok"] and result["latency"]["ask"]["n"] >= 38
    if storage == "journal":  # one host: a live worker's trial is never taken from it
        assert checks["dropped_by_live_workers"] == []


def test_checks_catch_duplicates_and_lost_results(loadtest, tmp_path):
    study = optuna.create_study(study_name="checks", storage=make_storage(None, tmp_path))
    for _ in range(2):
        study.enqueue_trial({})
    trial = pop_trial(study)  # owned by this process
    study.tell(trial, 0.25)
    pid = os.getpid()
    records = {
        0: [{"ev": "ready", "pid": pid}, {"ev": "claim", "trial_id": trial._trial_id},
            {"ev": "told", "trial_id": trial._trial_id, "value": 0.5}],  # the storage holds 0.25
        1: [{"ev": "ready", "pid": pid + 1}, {"ev": "claim", "trial_id": trial._trial_id}],
    }
    checks = loadtest.check(study.get_trials(), records, killed=[1], n_trials=2)
    assert checks["duplicate_claims"] == [trial._trial_id]
    assert checks["lost_results"] == [trial._trial_id]
    assert checks["unfinished_trials"] == [1]
    assert checks["counted_trials"] == 2 and checks["complete_trials"] == 1 and not checks["exact_count"]
    assert not checks["ok"]
    records[0][2]["value"] = 0.25
    records[1] = [{"ev": "ready", "pid": pid + 1}]
    assert loadtest.check(study.get_trials(), records, killed=[], n_trials=2)["lost_results"] == []


def test_bad_arguments_are_refused(loadtest, capsys):
    with pytest.raises(SystemExit):
        loadtest.parse(["--workers", "2", "--kills", "2"])
    assert "--kills must leave a worker alive: got 2 kills of 2 workers" in capsys.readouterr().err
