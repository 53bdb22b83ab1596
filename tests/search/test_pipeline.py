"""The search pipeline (nas.search.run.search) end to end: through the CLI, with parallel workers on
journal storage (nas.search.launch), killed workers, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState
from test_search import TINY, config, counted, small_corpus

from nas.search.run import search
from nas.search.study import join_study, open_study
from nas.trials import Outcome

POSTGRES = os.environ.get("NAS_TEST_POSTGRES_URL")


def test_six_trial_search_through_the_cli(tmp_path):
    exe = shutil.which("nas-search")
    assert exe, "nas-search is not installed"
    out = tmp_path / "study"
    p = subprocess.run([exe, *TINY, "n_trials=6", "search_space=highway", "controller=random",
                        "baselines=[lstm]", f"out_dir={out}", f"data.path={small_corpus(tmp_path)}",
                        f"data.cache_dir={tmp_path / 'cache'}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "baseline" in p.stdout and "trial" in p.stdout and "6 trials" in p.stdout
    study, cfg = join_study("highway-random", None, str(out))
    assert len(counted(study)) == 6
    assert cfg["search_space"]["name"] == "highway"
    assert all(t.state.is_finished() for t in study.get_trials())



def test_two_workers_share_the_study_exactly(tmp_path):
    cfg = config(tmp_path, "n_trials=8", "workers=2", "search_space=highway", "controller=random",
                 "baselines=[]", "study=par")
    outcome = search(cfg, progress=False)
    study, _ = join_study("par", None, cfg.out_dir)
    trials = counted(study)
    assert len(trials) == 8 and outcome.n_trials == 8
    # every trial ran once; the ones that trained nothing (duplicates) were replaced, not counted
    everything = study.get_trials()
    assert all(t.state.is_finished() for t in everything)
    assert sorted(t.number for t in everything) == list(range(len(everything)))
    assert len({t.user_attrs["cell_hash"] for t in trials}) == 8  # 8 distinct cells trained
    assert all("duplicate_of" in t.user_attrs for t in everything if t not in trials)
    workers = {t.system_attrs["nas:worker"] for t in everything}
    assert len(workers) == 2, workers  # both processes took part
    # rerunning the same command finds the budget met and runs nothing more
    again = search(cfg, progress=False)
    assert again.n_trials == 8 and len(study.get_trials()) == len(everything)
    # a larger budget resumes the same study
    search(replace(cfg, n_trials=10, workers=1), progress=False)
    assert len(counted(study)) == 10



def test_killed_worker_is_detected_and_its_trial_retried(tmp_path):
    slow = ["trainer.steps=400", "trainer.seconds=1.5", "trainer.eval_every=400", "n_trials=3", "baselines=[]", "study=kill",
            "search_space=highway", "controller=random", "pruner=none"]
    cfg = config(tmp_path, *slow)
    study = open_study(cfg, multi_objective=False)
    worker = subprocess.Popen([sys.executable, "-m", "nas.search.worker", "--study", "kill", "--out-dir",
                               cfg.out_dir, "--threads", "1"])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            running = study.get_trials(states=(TrialState.RUNNING,))
            if running and "cell_hash" in running[0].user_attrs:  # sampled: now training
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker never started a trial")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    lost_number = running[0].number
    # the same command resumes: the dead worker's trial is failed as lost and retried
    search(cfg, progress=False)
    trials = study.get_trials()
    lost = [t for t in trials if t.user_attrs.get("nas_state") == Outcome.LOST]
    assert [t.number for t in lost] == [lost_number]
    assert lost[0].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost_number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == lost[0].params
    # exactly the budget counts, every counted trial finished with its cell's own outcome
    outcomes = [(t.state, t.user_attrs.get("nas_state")) for t in counted(study)]
    assert len(outcomes) == 3 and all(state.is_finished() and nas_state in ("complete", "diverged")
                                      for state, nas_state in outcomes), outcomes



@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets NAS_TEST_POSTGRES_URL")
def test_two_workers_on_postgresql(tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp_path, "n_trials=6", "workers=2", "search_space=highway", "controller=tpe",
                 "baselines=[]", f"study={name}", f"storage.url={POSTGRES}")
    search(cfg, progress=False)
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    trials = counted(study)
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state.is_finished() for t in trials)
    assert len({t.system_attrs["nas:worker"] for t in trials}) == 2



def test_workers_per_device_on_the_cpu_runs_k_workers(tmp_path):
    cfg = config(tmp_path, "n_trials=4", "workers=1", "workers_per_device=2", "search_space=highway",
                 "controller=random", "baselines=[]", "study=wpd")
    search(cfg, progress=False)
    study, _ = join_study("wpd", None, cfg.out_dir)
    assert len({t.system_attrs["nas:worker"] for t in study.get_trials()}) == 2
