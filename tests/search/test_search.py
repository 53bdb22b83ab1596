"""The search end to end: CLI, parallel workers on journal storage, killed workers, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState

from nas.cli import CONF_DIR
from nas.search.objective import equations
from nas.search.results import trial_cell
from nas.search.run import format_table, search
from nas.search.storage import LOST, counts_toward_budget
from nas.search.study import StudyError, join_study, open_study

TINY = ["trainer=tiny", "trainer.steps=6", "trainer.eval_every=3", "trainer.eval_chars=500",
        "trainer.sample_chars=0", "pruner=none", "tracking.enabled=false", "report.enabled=false",
        "workers=1", "export.enabled=false"]


def small_corpus(tmp_path):
    """A 60k-character slice of the default corpus: the final full-split evaluations stay cheap."""
    from nas.data import default_corpus_path

    path = tmp_path / "small.txt"
    if not path.exists():
        path.write_text(default_corpus_path().read_text()[:60_000])
    return path


def config(tmp_path, *overrides) -> dict:
    import nas.cli.search  # noqa: F401 - registers the schema

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, f"out_dir={tmp_path / 'study'}",
                                           f"data.path={small_corpus(tmp_path)}",
                                           f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def counted(study):
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_budget(t)]


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
    study, _ = join_study("par", None, cfg["out_dir"])
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
    search({**cfg, "n_trials": 10, "workers": 1}, progress=False)
    assert len(counted(study)) == 10


def test_killed_worker_is_detected_and_its_trial_retried(tmp_path):
    slow = ["trainer.steps=400", "trainer.seconds=1.5", "trainer.eval_every=400", "n_trials=3", "baselines=[]", "study=kill",
            "search_space=highway", "controller=random", "pruner=none"]
    cfg = config(tmp_path, *slow)
    study = open_study(cfg, multi_objective=False)
    worker = subprocess.Popen([sys.executable, "-m", "nas.search.worker", "--study", "kill", "--out-dir",
                               cfg["out_dir"], "--threads", "1"])
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
    lost = [t for t in trials if t.user_attrs.get("nas_state") == LOST]
    assert [t.number for t in lost] == [lost_number]
    assert lost[0].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost_number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == lost[0].params
    # exactly the budget counts, every counted trial finished with its cell's own outcome
    outcomes = [(t.state, t.user_attrs.get("nas_state")) for t in counted(study)]
    assert len(outcomes) == 3 and all(state.is_finished() and nas_state in ("complete", "diverged")
                                      for state, nas_state in outcomes), outcomes


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = config(tmp_path, "n_trials=1", "baselines=[]", "study=fixed", "search_space=highway")
    open_study(cfg, multi_objective=False)
    other = {**cfg, "trainer": {**cfg["trainer"], "steps": 7}}
    with pytest.raises(StudyError, match="trainer.steps: 6 -> 7"):
        open_study(other, multi_objective=False)


def test_invalid_cells_fail_with_their_reason_and_duplicates_are_reused(tmp_path):
    cfg = config(tmp_path, "n_trials=12", "baselines=[]", "study=g", "search_space=graph",
                 "search_space.options.min_nodes=2", "search_space.options.max_nodes=5", "controller=random")
    outcome = search(cfg, progress=False)
    study, _ = join_study("g", None, cfg["out_dir"])
    for t in study.get_trials():
        state = t.user_attrs.get("nas_state")
        assert state in ("complete", "duplicate", "invalid", "diverged", "screened"), (t.number, state)
        if t.state == TrialState.FAIL:
            assert t.user_attrs["reason"]
        if state == "duplicate":
            first = study.trials[t.user_attrs["duplicate_of"]]
            assert first.user_attrs["cell_hash"] == t.user_attrs["cell_hash"]
            assert first.values == t.values
        if "cell_json" in t.user_attrs:  # what optuna-dashboard shows of each trial's cell
            assert t.user_attrs["cell"] == t.user_attrs.get("reference", "new")
            assert t.user_attrs["equations"] == equations(trial_cell(t))
    assert "new" in {t.user_attrs.get("cell") for t in study.trials}
    assert "val bpc" in format_table(outcome)


def test_the_cell_reads_as_equations():
    from nas.cell import known_cell

    assert equations(known_cell("gru")) == [
        "r_lin = linear(x, h)", "z_lin = linear(x, h)", "r = sigmoid(r_lin)", "z = sigmoid(z_lin)",
        "xn = linear(x)", "hn = linear(h)", "rhn = mul(r, hn)", "n_pre = add(xn, rhn)", "n = tanh(n_pre)",
        "h_new = blend(z, h, n)", "h' = h_new"]
    assert "f_lin = linear(x, h, bias_init=1.0)" in equations(known_cell("lstm"))  # options unlike the default


@pytest.mark.parametrize("controller, names", [("random", ["val_bpc"]), ("nsga2", ["val_bpc", "params"])])
def test_the_study_names_its_metrics(tmp_path, controller, names):
    """optuna-dashboard labels the objectives by these names (not "Objective 0")."""
    cfg = config(tmp_path, f"controller={controller}", "study=m")
    assert open_study(cfg, multi_objective=len(names) == 2).metric_names == names


POSTGRES = os.environ.get("NAS_TEST_POSTGRES_URL")


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


def test_evolution_starts_from_the_reference_cells_of_the_space(tmp_path):
    """Trials come from the budget's placeholders (top_up): evolution must still seed them."""
    from nas.cell import known_cell
    from nas.search_spaces import get_space

    cfg = config(tmp_path, "n_trials=3", "baselines=[]", "study=evo", "search_space=graph",
                 "controller=evolution")
    search(cfg, progress=False)
    study, _ = join_study("evo", None, cfg["out_dir"])
    names = list(get_space("graph", **cfg["search_space"]["options"]).known)[:3]
    assert [t.system_attrs.get("evolution:seed") for t in study.trials] == [0, 1, 2]
    assert [t.user_attrs["cell_hash"] for t in study.trials] == [known_cell(n).canonical_hash() for n in names]
    assert [t.user_attrs["cell"] for t in study.trials] == names
    assert [t.user_attrs["cell_label"] for t in study.trials] == [f"trial {i} = {n}" for i, n in enumerate(names)]
    assert study.metric_names == ["val_bpc"]


def test_workers_per_device_places_k_workers_on_each_gpu(monkeypatch):
    import torch

    from nas.search.worker import local_workers, pin_device

    assert local_workers(3, None, "auto") == 3
    assert local_workers(3, 2, "auto") == 2  # no GPU here: k workers on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    n = local_workers(1, 2, "auto")
    assert n == 8
    devices = [pin_device("auto", None, i) for i in range(n)]
    assert sorted(devices) == sorted(f"cuda:{g}" for g in range(4) for _ in range(2))
    assert local_workers(1, 2, "cpu") == 2  # a CPU search on a GPU machine


def test_workers_per_device_on_the_cpu_runs_k_workers(tmp_path):
    cfg = config(tmp_path, "n_trials=4", "workers=1", "workers_per_device=2", "search_space=highway",
                 "controller=random", "baselines=[]", "study=wpd")
    search(cfg, progress=False)
    study, _ = join_study("wpd", None, cfg["out_dir"])
    assert len({t.system_attrs["nas:worker"] for t in study.get_trials()}) == 2
