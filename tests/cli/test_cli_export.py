"""`nas-export` through the real console script: from a study's best trial, a trial number, a cell
hash and a JSON file; trained weights carried over; one clear line for each bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export_lm import run_alone
from test_search import config

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.search import results
from nas.search.run import search
from nas.search.study import join_study


def nas_export(args, cwd):
    exe = shutil.which("nas-export")
    assert exe, "nas-export is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = config(tmp, "n_trials=3", "baselines=[lstm]", "study=ex", "search_space=highway",
                 "controller=random")
    search(cfg, progress=False)
    return cfg.out_dir


def load_module(folder, name):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_best_trial_with_weights_and_baselines(study_dir, tmp_path):
    p = nas_export(["study=ex", f"study_dir={study_dir}", f"dest={tmp_path / 'out'}", "name=best_cell"],
                   tmp_path)
    assert p.returncode == 0, p.stderr
    assert "with the trained model" in p.stdout and "torch.nn.LSTM" in p.stdout
    study, _ = join_study("ex", None, study_dir)
    best = results.best_trial(study)
    folder = tmp_path / "out"
    cell = json.loads((folder / "cell.json").read_text())
    assert cell == json.loads(best.user_attrs["cell_json"])
    card = (folder / "README.md").read_text()
    assert best.user_attrs["cell_hash"] in card and "lstm" in card and f"trial {best.number}" in card
    # the trial's trained weights load into the exported module and give CellRNN's outputs
    module = load_module(folder, "best_cell")
    spec = results.trial_cell(best)
    weights = torch.load(folder / "weights.pt", weights_only=True)
    hidden = best.user_attrs["hidden_size"]
    exported = module.BestRNN(hidden, hidden)
    exported.load_state_dict(weights)
    ref = CellRNN(spec, hidden, hidden)
    ref.load_state_dict(results.trial_weights(study, best))
    x = torch.randn(5, 2, hidden)
    assert torch.allclose(exported(x)[0], ref(x)[0], atol=1e-6)
    # the whole trained model, with torch alone: evaluate.py gives the trial's val bpc, sample.py text
    corpus = Path(study_dir).parent / "small.txt"
    out = run_alone(folder / "evaluate.py", corpus, "--split", "val", cwd=tmp_path)
    assert float(out.split()[0]) == pytest.approx(best.user_attrs["val_bpc"], abs=1e-4)
    assert len(run_alone(folder / "sample.py", "--chars", 30, cwd=tmp_path)) == 1 + 30 + 1
    assert "## Trained model" in card and "## Speed" in card


def test_trial_number_cell_hash_and_json_file(study_dir, tmp_path):
    study, _ = join_study("ex", None, study_dir)
    t = study.trials[1]
    p = nas_export(["study=ex", f"study_dir={study_dir}", "trial=1", f"dest={tmp_path / 'a'}"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "a" / "cell.json").read_text()) == json.loads(t.user_attrs["cell_json"])
    p = nas_export(["study=ex", f"study_dir={study_dir}", f"cell_hash={t.user_attrs['cell_hash']}",
                    f"dest={tmp_path / 'b'}"], tmp_path)
    assert p.returncode == 0, p.stderr
    (tmp_path / "c.json").write_text(known_cell("gru").to_json())
    p = nas_export(["cell=c.json", f"dest={tmp_path / 'c'}"], tmp_path)
    assert p.returncode == 0 and "NO trained model included: cell=c.json names a cell" in p.stdout, p.stderr
    assert (tmp_path / "c" / "gru.py").exists() and not (tmp_path / "c" / "sample.py").exists()
    assert "**No trained model is included**" in (tmp_path / "c" / "README.md").read_text()


def test_a_training_run_folder_exports_its_trained_model(study_dir, tmp_path):
    """cell=<run folder>: a nas-train run folder (cell.json, weights.pt, result.json, .hydra/config.yaml
    naming the corpus); here a trial's run folder with the config nas-train would have written."""
    study, _ = join_study("ex", None, study_dir)
    best = results.best_trial(study)
    run = tmp_path / "run"
    shutil.copytree(best.user_attrs["run_dir"], run)
    (run / ".hydra").mkdir()
    data = {"path": str(Path(study_dir).parent / "small.txt"), "cache_dir": str(tmp_path / "cache")}
    (run / ".hydra" / "config.yaml").write_text(json.dumps({"cell": "cell.json", "data": data}))
    p = nas_export([f"cell={run}", f"dest={tmp_path / 'out'}", "name=from_run"], tmp_path)
    assert p.returncode == 0 and "with the trained model" in p.stdout, p.stderr
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["reported"]["val_bpc"] == best.user_attrs["val_bpc"] and meta["rnn_class"] == "FromRunRNN"
    p = nas_export([f"cell={tmp_path}", f"dest={tmp_path / 'x'}"], tmp_path)
    assert p.returncode != 0 and "not a training run folder (no cell.json in it)" in p.stderr


def test_bad_input_gives_one_clear_line(study_dir, tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    empty = config(tmp_path, "n_trials=0", "baselines=[]", "study=empty", "search_space=highway")
    search(empty, progress=False)
    cases = [
        (["study=ex", f"study_dir={study_dir}", "trial=99"], "no trial 99"),
        (["study=nope", f"study_dir={tmp_path / 'nope'}"], "no study named 'nope'"),
        (["study=empty", f"study_dir={empty.out_dir}"], "no completed trial"),
        (["cell=bad.json"], "invalid JSON"),
        ([], "say what to export"),
        (["study=ex", f"study_dir={study_dir}", "cell_hash=c1-000"], "no trial"),
    ]
    for args, expect in cases:
        p = nas_export([*args, f"dest={tmp_path / 'x'}"], tmp_path)
        assert p.returncode != 0 and expect in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    # an existing non-empty destination is refused, not overwritten
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    p = nas_export(["cell=lstm", f"dest={tmp_path / 'full'}"], tmp_path)
    assert p.returncode != 0 and (tmp_path / "full" / "keep.txt").exists()


def test_from_an_mlflow_run_id(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(tmp_path, "n_trials=2", "baselines=[]", "study=mlx", "search_space=highway",
                 "controller=random", "tracking.enabled=true", f"tracking.uri={uri}")
    search(cfg, progress=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("nas/mlx")
    run = client.search_runs([exp.experiment_id], filter_string="tags.role = 'trial' and tags.trial = '1'")[0]
    p = nas_export([f"run_id={run.info.run_id}", f"tracking.uri={uri}", f"study_dir={cfg.out_dir}",
                    f"dest={tmp_path / 'r'}"], tmp_path)
    assert p.returncode == 0, p.stderr
    study, _ = join_study("mlx", None, cfg.out_dir)
    assert json.loads((tmp_path / "r" / "cell.json").read_text()) == json.loads(
        study.trials[1].user_attrs["cell_json"])
    p = nas_export(["run_id=0123456789abcdef", f"tracking.uri={uri}", f"dest={tmp_path / 's'}"], tmp_path)
    assert p.returncode != 0 and "no MLflow run" in p.stderr and "Traceback" not in p.stderr


def test_a_study_of_reference_cells_only_exports_its_best_and_says_so(tmp_path, capsys):
    from nas.cli.export import resolve
    from nas.config import ExportApp

    cfg = config(tmp_path, "n_trials=2", "baselines=[]", "study=refs", "controller=evolution",
                 "pruner=none", "report.enabled=false", "export.enabled=false", "tracking.enabled=false")
    search(cfg, progress=False)  # evolution starts from the space's reference cells
    found = resolve(ExportApp(study="refs", study_dir=cfg.out_dir))
    study, _ = join_study("refs", None, cfg.out_dir)
    best = results.scored_trials(study)[0]
    assert found["origin"]["trial"] == best.number and found["origin"]["reference cell"] != "none (a new cell)"
    assert f"has completed no new cell yet; exporting its best trial, {results.label(best)}" in capsys.readouterr().out
