"""`nas-train` through the real console script: outputs, and one clear line for each bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from nas.cell import known_cell

TINY = ["trainer=tiny", "trainer.steps=6", "trainer.eval_every=3"]


def nas_train(args, tmp_path, **kw):
    exe = shutil.which("nas-train") or sys.executable
    cmd = [exe] + ([] if exe.endswith("nas-train") else ["-m", "nas.cli.train"]) + list(args)
    env = {**os.environ, "NAS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NAS_DEBUG", None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, **kw)


def test_trains_a_reference_cell_and_writes_the_run(tmp_path):
    p = nas_train(["cell=gru", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode == 0, p.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["cell_hash"] == known_cell("gru").canonical_hash()
    assert result["steps"] == 6 and result["test_bpc"] is None and result["divergence"] is None
    for name in ("weights.pt", "cell.json", "sample.txt"):
        assert (tmp_path / "run" / name).exists()
    assert '"val_bpc"' in p.stdout
    check_tracked(tmp_path / "runs" / "mlflow" / "mlflow.db", result, p.stdout)


def check_tracked(db, result, stdout):
    """The run in MLflow's store (the searches' default, runs/mlflow/mlflow.db): experiment nas/train."""
    import nas.tracking

    for key, value in nas.tracking.QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("nas/train")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([exp.experiment_id])
    assert f"MLflow run {run.info.run_id}" in stdout
    assert run.info.run_name == "train gru seed 0" and run.info.status == "FINISHED"
    assert run.data.tags["role"] == "train" and run.data.tags["cell"] == "gru"
    params = run.data.params
    assert params["cell_hash"] == result["cell_hash"] and params["param_count"] == str(result["params"])
    assert params["hidden_size"] == str(result["hidden_size"]) and params["trainer.steps"] == "6"
    assert run.data.metrics["val_bpc"] == pytest.approx(result["val_bpc"], abs=1e-4)
    assert "params" not in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "curve/val_bpc")
    assert [(m.step, m.value) for m in history] == [tuple(p) for p in result["curve"]]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"cell.json", "cell.png", "sample.txt",
                                                                          "result.json"}


def test_trains_a_cell_json_file_on_a_given_corpus(tmp_path):
    (tmp_path / "cell.json").write_text(known_cell("mut2").to_json())
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
    p = nas_train(["cell=cell.json", "data.path=corpus.txt", *TINY, "trainer.test=true",
                   "hydra.run.dir=out", "tracking.enabled=false"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "runs" / "mlflow").exists() and "MLflow run" not in p.stdout  # tracking off
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["cell_hash"] == known_cell("mut2").canonical_hash()
    assert result["test_bpc"] is not None and result["corpus"] == "corpus"


@pytest.mark.parametrize("args,expect", [
    (["cell=lstmm"], "unknown cell 'lstmm'"),
    (["cell=missing.json"], "does not exist"),
    (["cell=bad.json"], "invalid JSON"),
    (["cell=cyclic.json"], "cycle"),
    (["data.path=nowhere.txt"], "nowhere.txt"),
    (["data.path=empty.txt"], "empty"),
    (["data.path=small.txt"], "too small"),
    (["trainer.stepz=3"], "stepz"),
    (["trainer.steps=zero"], "steps"),
    (["trainer.lr=-1"], "trainer.lr"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, expect):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "cyclic.json").write_text(json.dumps({
        "state": ["h"], "nodes": {"a": {"op": "tanh", "in": ["b"]}, "b": {"op": "add", "in": ["a", "x"]},
                                  "o": {"op": "add", "in": ["b", "h"]}}, "outputs": {"h": "o"}}))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "small.txt").write_text("tiny corpus")
    p = nas_train([*args, *TINY, "hydra.run.dir=out"], tmp_path)
    assert p.returncode != 0
    assert expect in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
