"""MLflow tracking end to end: a real `mlflow server`, the default SQLite store, a server killed mid-search,
nas-report on an existing study, nas-dashboard; and the trial-state mapping on a synthetic study."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState, create_trial

import nas.tracking
from nas.cli import CONF_DIR
from nas.search.run import search
from nas.search.study import join_study
from nas.tracking import PARENT_ATTR, Tracker, TrackingWarning, trial_of_run
from nas.tracking.server import start_server, wait_until_up

for _key, _value in nas.tracking.QUIET_ENV.items():  # no telemetry from the test's own MLflow client
    os.environ.setdefault(_key, _value)
from mlflow import MlflowClient

BASELINES = ["lstm", "gru", "mut1", "mut2", "mut3"]
TINY = ["trainer=tiny", "trainer.steps=6", "trainer.eval_every=3", "trainer.eval_chars=500",
        "trainer.sample_chars=20", "pruner=none", "workers=1", "search_space=highway", "controller=random",
        "n_trials=3",
        "tracking.enabled=true", "report.enabled=true", "report.seeds=2", "report.top_k=1", "report.steps=null",
        f"baselines=[{','.join(BASELINES)}]"]


def config(tmp_path: Path, *overrides: str) -> dict:
    """A tiny search on the first 40,000 characters of Tiny Shakespeare (2,000 each for val and test)."""
    import nas.cli.search
    import nas.corpora

    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        text = (Path(nas.corpora.__file__).parent / "tinyshakespeare.txt").read_text()
        corpus.write_text(text[:40_000])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, f"out_dir={tmp_path / 'study'}", f"data.path={corpus}",
                                           f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int | None = None):
    """A real `mlflow server` (light settings) on a free localhost port; yields (uri, process)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(f"sqlite:///{folder / 'server.db'}", port, folder / "server.log", str(folder / "artifacts"))
    try:
        why = wait_until_up(proc, url)
        if why is not None:
            pytest.fail(f"mlflow server {why} (see {folder / 'server.log'})")
        yield url, proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def runs_of(client: MlflowClient, study: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(f"nas/{study}")
    assert exp is not None, f"no experiment nas/{study}"
    by_role: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        by_role.setdefault(r.data.tags.get("role"), []).append(r)
    return by_role


def check_logged(client: MlflowClient, cfg: dict, outcome) -> None:
    """What the issue asks the dashboard to show after a 3-trial search with baselines and a report."""
    study, _ = join_study(cfg["study"], None, cfg["out_dir"])
    runs = runs_of(client, cfg["study"])
    (parent,) = runs["search"]
    assert study.user_attrs[PARENT_ATTR] == parent.info.run_id and parent.info.status == "FINISHED"
    assert parent.data.params["trainer.steps"] == "6" and parent.data.params["controller.name"] == "random"
    trials = sorted(runs["trial"], key=lambda r: int(r.data.tags["trial"]))
    assert [r.data.tags["trial"] for r in trials] == ["0", "1", "2"]
    exp = client.get_experiment_by_name(f"nas/{cfg['study']}")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training view
    view = json.loads(exp.tags["mlflow.sharedViewState.nas-compare"])  # what experiment_url opens
    assert view["searchFilter"] == "tags.role = 'comparison'" and view["runsHiddenMode"] == "SHOW_ALL"
    assert "| cell |" in exp.tags["mlflow.note.content"] and "How to read" in exp.tags["mlflow.note.content"]
    for run, t in zip(trials, study.trials):
        tags, params = run.data.tags, run.data.params
        # visible without expanding: trials, baselines and compared cells are top-level runs
        assert "mlflow.parentRunId" not in tags and tags["study"] == cfg["study"]
        assert run.info.run_name == t.user_attrs["cell_label"]  # "trial 2 (new)" / "trial 2 = mut3"
        assert tags["state"] == "complete" and run.info.status == "FINISHED"
        assert params["cell_hash"] == t.user_attrs["cell_hash"] and params["search_space"] == "highway"
        assert params["controller"] == "random" and params["seed"] == "0" and params["trainer.lr"] == "0.01"
        assert params["param_count"] == str(t.user_attrs["params"])
        assert params["hidden_size"] == str(t.user_attrs["hidden_size"]) and params["steps"] == "6"
        assert params["budget"] == t.user_attrs["budget"]
        history = client.get_metric_history(run.info.run_id, "curve/val_bpc")
        assert [(m.step, m.value) for m in history] == [tuple(p) for p in t.user_attrs["curve"]]
        assert len(client.get_metric_history(run.info.run_id, "curve/train_bpc")) == 2
        assert run.data.metrics["val_bpc"] == pytest.approx(t.values[0], abs=1e-4)  # 4 decimals, as printed
        assert client.get_metric_history(run.info.run_id, "val_bpc")[0].step == 0  # a bar per run in charts
        assert {"val_bpc", "train_bpc", "chars_per_sec", "seconds"} <= set(run.data.metrics)
        assert not {"params", "hidden_size", "steps", "tokens"} & set(run.data.metrics)  # constants: params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts >= {"cell.json", "cell.png", "sample.txt"}
    cell = json.loads(Path(client.download_artifacts(trials[0].info.run_id, "cell.json")).read_text())
    assert cell["format"] == "nas-cell/1"
    baselines = {r.data.tags["cell"]: r for r in runs["baseline"]}
    assert sorted(baselines) == sorted(BASELINES)
    for name, run in baselines.items():
        budget = run.data.tags["budget"]
        assert budget == study.trials[0].user_attrs["budget"]
        trained = study.user_attrs[f"baseline:{name}:{budget}"]
        assert run.data.metrics["val_bpc"] == pytest.approx(trained["val_bpc"], abs=1e-4)
    assert all("mlflow.parentRunId" not in r.data.tags for r in runs["baseline"])
    # One run per compared cell, named after it, with the mean test bpc under one metric name (one
    # chart in MLflow); each cell's seed runs are nested under it.
    cells = {r.data.tags["cell_hash"]: r for r in runs["comparison"]}
    assert len(cells) == len(runs["comparison"]) == 1 + len(BASELINES)
    finals = runs["final"]
    assert len(finals) == (1 + len(BASELINES)) * 2 and all("test_bpc" in r.data.metrics for r in finals)
    for run in finals:
        assert run.data.tags["mlflow.parentRunId"] == cells[run.data.tags["cell_hash"]].info.run_id
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert report == {f"report/{n}" for n in ("comparison.md", "comparison.csv", "learning_curves.png",
                                               "test_bpc_vs_params.png", "best_so_far.png")}
    table = Path(client.download_artifacts(parent.info.run_id, "report/comparison.csv")).read_text()
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(table))}
    for name in BASELINES:
        assert float(rows[name]["test_bpc_mean"]) > 0 and rows[name]["n_seeds"] == "2"
        assert float(rows[name]["params"]) > 0 and float(rows[name]["chars_per_sec"]) > 0
    for cell in cells.values():
        row = rows[cell.data.tags["cell"]]
        assert cell.info.run_name == f"final {row['label']}" and cell.data.tags["n_seeds"] == "2"
        assert cell.data.metrics["test_bpc"] == pytest.approx(float(row["test_bpc_mean"]), abs=1e-4)
        assert cell.data.params["param_count"] == row["params"]
    assert not [k for k in parent.data.metrics if k.startswith("test_bpc")]  # not 8 one-bar charts
    best = outcome.comparison.best()
    assert parent.data.tags["best_cell"] == best.label
    assert "| cell |" in parent.data.tags["mlflow.note.content"]  # the table is the run's description
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "best_val_bpc")] == [0, 1, 2]


def test_search_logs_everything_to_a_tracking_server(tmp_path):
    with mlflow_server(tmp_path / "server") as (uri, _):
        cfg = config(tmp_path, f"tracking.uri={uri}", "study=srv")
        outcome = search(cfg, progress=False)
        check_logged(MlflowClient(uri), cfg, outcome)


@pytest.fixture(scope="module")
def sqlite_search(tmp_path_factory):
    """A search logged to the default store (runs/mlflow/mlflow.db under the working directory)."""
    tmp = tmp_path_factory.mktemp("sqlite")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        cfg = config(tmp, "study=local")
        outcome = search(cfg, progress=False)
    return tmp, cfg, outcome


def test_search_logs_everything_to_the_default_sqlite_store(sqlite_search):
    tmp, cfg, outcome = sqlite_search
    db = tmp / "runs" / "mlflow" / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment_by_name("nas/local").artifact_location.startswith(
        (tmp / "runs" / "mlflow" / "artifacts").as_uri())
    check_logged(client, cfg, outcome)
    # nas-export run_id=...: a trial run leads back to its study and trial
    runs = runs_of(client, "local")
    trial = next(r for r in runs["trial"] if r.data.tags["trial"] == "2")
    assert trial_of_run({"uri": f"sqlite:///{db}"}, trial.info.run_id) == ("local", 2)
    with pytest.raises(ValueError, match="not a trial"):
        trial_of_run({"uri": f"sqlite:///{db}"}, runs["baseline"][0].info.run_id)
    with pytest.raises(ValueError, match="no MLflow run"):
        trial_of_run({"uri": f"sqlite:///{db}"}, "0" * 32)


def test_nas_report_reuses_the_study_and_adds_a_seed(sqlite_search):
    tmp, cfg, _ = sqlite_search
    exe = shutil.which("nas-report")
    assert exe, "nas-report is not installed"
    p = subprocess.run([exe, "study=local", f"out_dir={cfg['out_dir']}", "report.seeds=3"],
                       capture_output=True, text=True, cwd=tmp, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for name in BASELINES:
        assert f"| {name} | baseline |" in p.stdout
    assert "| 3 |" in p.stdout  # three seeds per cell now
    client = MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow' / 'mlflow.db'}")
    runs = runs_of(client, "local")
    assert len(runs["search"]) == 1 and len(runs["trial"]) == 3 and len(runs["baseline"]) == 5
    finals = [(r.data.tags["cell"], r.data.tags["seed"]) for r in runs["final"]]
    assert len(finals) == len(set(finals)) == 6 * 3  # the two earlier seeds were reused, not retrained
    assert len(runs["comparison"]) == 6  # the same cell runs, their means now over three seeds
    table = (Path(cfg["out_dir"]) / "report" / "comparison.csv").read_text()
    means = {r["cell_hash"]: float(r["test_bpc_mean"]) for r in csv.DictReader(io.StringIO(table))}
    for cell in runs["comparison"]:
        assert cell.data.tags["n_seeds"] == "3"
        assert cell.data.metrics["test_bpc"] == pytest.approx(means[cell.data.tags["cell_hash"]], abs=1e-4)
        assert len(client.get_metric_history(cell.info.run_id, "test_bpc")) == 2  # 2 seeds, then 3
    assert runs["search"][0].info.status == "FINISHED"


def test_dashboard_serves_the_store_until_interrupted(sqlite_search):
    tmp, _, _ = sqlite_search
    port = free_port()
    proc = subprocess.Popen([shutil.which("nas-dashboard"), "--port", str(port)], cwd=tmp, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # printed once the server answers
        url = f"http://127.0.0.1:{port}"
        assert line.startswith(f"MLflow dashboard: {url}"), (line, proc.stderr.read() if proc.poll() else "")
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=9", timeout=9) as r:
            names = [e["name"] for e in json.load(r)["experiments"]]
        assert "nas/local" in names
        client = MlflowClient(url)
        run = runs_of(client, "local")["trial"][0]
        artifact = f"{url}/get-artifact?path=cell.json&run_uuid={run.info.run_id}"
        with urllib.request.urlopen(artifact, timeout=10) as r:
            assert json.load(r)["format"] == "nas-cell/1"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0
    with socket.socket() as s:  # the server is gone with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_server_killed_mid_search_then_back(tmp_path, monkeypatch):
    folder, port = tmp_path / "server", free_port()
    with mlflow_server(folder, port) as (uri, proc):
        logged = Tracker.log_trial

        def log_then_kill(self, study, trial, cfg):
            logged(self, study, trial, cfg)
            kill(proc)  # after the first trial is logged, the server dies

        monkeypatch.setattr(Tracker, "log_trial", log_then_kill)
        cfg = config(tmp_path, f"tracking.uri={uri}", "tracking.retries=1", "study=kill", "baselines=[lstm]",
                     "report.seeds=1")
        # How long the dead server costs (one round of short retries): benchmarks/tracking_overhead.py.
        with pytest.warns(TrackingWarning, match="unreachable") as caught:
            outcome = search(cfg, progress=False)
        monkeypatch.undo()
    ours = [w for w in caught if w.category is TrackingWarning]
    assert len(ours) == 1 and "results are in the Optuna study" in str(ours[0].message)
    study, _ = join_study("kill", None, cfg["out_dir"])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 and outcome.n_trials == 3
    assert (Path(cfg["out_dir"]) / "report" / "comparison.csv").is_file()
    # The server comes back (on the same store): rerunning the search logs what was missed, once.
    with mlflow_server(folder, port) as (uri, _):
        search(cfg, progress=False)
        runs = runs_of(MlflowClient(uri), "kill")
    assert sorted(int(r.data.tags["trial"]) for r in runs["trial"]) == [0, 1, 2]
    assert len(runs["search"]) == 1 and len(runs["baseline"]) == 1 and len(runs["final"]) == 2


def test_trial_states_become_run_states_with_reasons(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    study = optuna.create_study(study_name="states")
    curve = [[3, 5.5], [6, 5.1]]
    done = {"cell_hash": "c1-x", "budget": "b", "params": 100, "val_bpc": 5.1, "curve": curve,
            "train_curve": curve, "steps": 6}
    study.add_trial(create_trial(value=5.1, user_attrs={**done, "nas_state": "complete"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={3: 5.9},
                                 user_attrs={"nas_state": "pruned", "reason": "pruned at step 3"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "invalid",
                                                                     "reason": "node n3: no path to x"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "diverged",
                                                                     "reason": "step 4: loss is nan"}))
    study.add_trial(create_trial(value=5.1, user_attrs={**done, "nas_state": "duplicate", "duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "lost",
                                                                     "reason": "worker h:1 stopped"}))
    tracker.start_search(study, {"seed": 0, "trainer": {"steps": 6}})  # logs the finished trials
    for t in study.trials:
        tracker.log_trial(study, t, {})  # already logged: skipped
    client = MlflowClient(tracker.uri)
    runs = {int(r.data.tags["trial"]): r for r in runs_of(client, "states")["trial"]}
    assert len(runs_of(client, "states")["trial"]) == 6
    expect = [("complete", "complete", "FINISHED"), ("pruned", "pruned", "KILLED"),
              ("failed", "invalid", "FAILED"), ("diverged", "diverged", "FAILED"),
              ("duplicate", "duplicate", "FINISHED"), ("failed", "lost", "FAILED")]
    for n, (state, fine, status) in enumerate(expect):
        tags = runs[n].data.tags
        assert (tags["state"], tags["nas_state"], runs[n].info.status) == (state, fine, status), n
        if n in (1, 2, 3, 5):
            assert tags["reason"] == study.trials[n].user_attrs["reason"]
    assert [m.value for m in client.get_metric_history(runs[1].info.run_id, "curve/val_bpc")] == [5.9]
    assert runs[4].data.tags["duplicate_of"] == "0"


def test_a_deleted_store_is_said_and_every_run_logged_again(tmp_path):
    """Through the CLI (each run a fresh process: MLflow caches a SQLite engine per URI in a process)."""
    cfg = config(tmp_path, "study=gone")
    args = [shutil.which("nas-search"), *TINY, "study=gone", "baselines=[]", "report.enabled=false",
            "n_trials=2", f"out_dir={cfg['out_dir']}", f"data.path={cfg['data']['path']}",
            f"data.cache_dir={cfg['data']['cache_dir']}"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    db = tmp_path / "runs" / "mlflow" / "mlflow.db"
    db.unlink()
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the MLflow store" in again.stderr and "is gone (deleted?)" in again.stderr, again.stderr[-2000:]
    assert "unreachable" not in again.stderr
    runs = runs_of(MlflowClient(f"sqlite:///{db}"), "gone")
    assert len(runs["trial"]) == 2 and len(runs["search"]) == 1
