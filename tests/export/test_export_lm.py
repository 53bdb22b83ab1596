"""The trained character model of an export (nas.export.lm): sample.py and evaluate.py run with torch
alone (no project on the path) and reproduce nas's scores and samples; a run folder without a usable
model says why; the card states the speed against torch.nn.LSTM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.data import load_corpus
from nas.export import export_cell
from nas.export.lm import TrainedLM, find_trained_lm, measure_speed
from nas.export.templates import speed_section
from nas.lm import CharLM, sample, save_vocab, split_bpc

TEXT = "".join(f"{w} the quick brown fox {i % 7}! jumps over; lazy dogs?\n"
               for i, w in enumerate(["To be", "or not", "ROMEO:", "Juliet,", "Ay me"] * 60))
PROTOCOL = {"state_span": 64, "eval_burn_in": 8, "eval_batch_size": 3, "final_eval_chars": None,
            "tie_weights": True, "dropout": 0.0}

# `python -I -S -B`: no site-packages and no .pth files, so the project's editable install is invisible;
# only torch's folder is added back. Then the script runs as `python script.py args...` would run it.
RUN = """
import importlib.util, runpy, sys
sys.path.append(sys.argv[1])
assert importlib.util.find_spec("nas") is None, "the project is importable"
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_alone(script, *args, cwd):
    torch_dir = os.path.dirname(os.path.dirname(torch.__file__))
    p = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", RUN, torch_dir, str(script), *map(str, args)],
                       capture_output=True, text=True, cwd=cwd, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def trained_lm(tmp_path, corpus, spec, hidden=16, layers=2):
    """A CharLM with random (not tiny) weights, as a run folder's TrainedLM: scoring and sampling do not
    care whether the weights were trained, and this takes no training."""
    torch.manual_seed(0)
    model = CharLM(spec, corpus.vocab_size, hidden, layers)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    result = {"cell_hash": spec.canonical_hash(), "val_bpc": 3.0, "test_bpc": None, "corpus": corpus.name,
              "corpus_hash": corpus.source_hash, "corpus_format": corpus.format, "steps": 0, "seed": 0,
              "device": "cpu", "protocol": "test protocol", "config": PROTOCOL}
    return model.eval(), TrainedLM(tmp_path, model.state_dict(), corpus.symbols, corpus.format, result)


def nas_bpc(model, ids):
    return split_bpc(model, ids, PROTOCOL["state_span"], 5, torch.device("cpu"), None, False, None,
                     PROTOCOL["eval_burn_in"])


def score_of(stdout: str) -> float:
    return float(stdout.split()[0])


def test_scripts_reproduce_nas_scores_and_samples_with_torch_alone(tmp_path):
    # non-ASCII (UTF-8 characters), and "ü" only in the validation split: an unknown symbol there
    (tmp_path / "corpus.txt").write_text(TEXT.replace("Ay me", "Ay mé") + "\n" * 40 + "ü" + TEXT[:1500])
    corpus = load_corpus(tmp_path / "corpus.txt", tmp_path / "cache")
    model, lm = trained_lm(tmp_path, corpus, known_cell("gru"))
    folder = export_cell(known_cell("gru"), tmp_path / "out", lm=lm, speed=False)
    for name in ("model.pt", "model.json", "charlm.py", "sample.py", "evaluate.py", "weights.pt"):
        assert (folder / name).is_file(), name
    val = run_alone(folder / "evaluate.py", tmp_path / "corpus.txt", "--split", "val", cwd=tmp_path)
    assert score_of(val) == pytest.approx(nas_bpc(model, corpus.val), abs=1e-4)
    assert f"{len(corpus.val) - 1:,} of {len(corpus.val) - 1:,} symbols scored" in val
    assert corpus.unknown["val"] == 1 and "1 symbols outside the vocabulary" in val
    text = run_alone(folder / "sample.py", "--chars", 40, "--seed", 3, "--prime", "To", cwd=tmp_path)
    assert text == "To" + sample(model, corpus.encode, corpus.decode, 40, 0.8, prime="To", seed=3) + "\n"
    card = (folder / "README.md").read_text()
    assert "## Trained model" in card and "python evaluate.py" in card and "segments of 64" in card


@pytest.mark.parametrize("name", ["gru", "zz_cell", "Abc"])  # the cell module's import sorts anywhere
def test_generated_scripts_pass_ruff_and_pyflakes(tmp_path, name):
    (tmp_path / "corpus.txt").write_text(TEXT)
    _, lm = trained_lm(tmp_path, load_corpus(tmp_path / "corpus.txt", tmp_path / "cache"), known_cell("gru"))
    folder = export_cell(known_cell("gru"), tmp_path / "out", name=name, lm=lm, speed=False)
    files = [str(folder / f) for f in (f"{name}.py", "charlm.py", "sample.py", "evaluate.py")]
    ruff = shutil.which("ruff") or pytest.skip("ruff is not installed")
    for args in (["--isolated"], ["--isolated", "--select", "E,F,W", "--line-length", "110"]):
        p = subprocess.run([ruff, "check", "--no-cache", *args, *files], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout, p.stdout + p.stderr


def test_spaced_corpus_scores_per_character_not_per_separator(tmp_path):
    data = tmp_path / "ptb"
    data.mkdir()
    lines = [" ".join(line.replace(" ", "_")) for line in TEXT.splitlines()]
    for split, part in (("train", lines[:200]), ("valid", lines[200:250]), ("test", lines[250:])):
        (data / f"ptb.char.{split}.txt").write_text("\n".join(part) + "\n")
    corpus = load_corpus(data, tmp_path / "cache")
    assert corpus.format == "spaced"
    model, lm = trained_lm(tmp_path, corpus, known_cell("lstm"), layers=1)
    folder = export_cell(known_cell("lstm"), tmp_path / "out", lm=lm, speed=False)
    out = run_alone(folder / "evaluate.py", data / "ptb.char.valid.txt", cwd=tmp_path)
    assert "(spaced)" in out and score_of(out) == pytest.approx(nas_bpc(model, corpus.val), abs=1e-4)
    assert "the separator spaces are not symbols" in (folder / "README.md").read_text()


def test_run_folder_without_a_usable_model_says_why(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    corpus = load_corpus(tmp_path / "corpus.txt", tmp_path / "cache")
    spec = known_cell("gru")
    model, lm = trained_lm(tmp_path, corpus, spec)
    run = tmp_path / "run"
    assert "weights.pt and result.json expected" in find_trained_lm(run)
    run.mkdir()
    torch.save(model.state_dict(), run / "weights.pt")
    (run / "result.json").write_text(json.dumps(lm.result))
    assert "vocabulary of" in find_trained_lm(run) and "unknown" in find_trained_lm(run)
    data = {"path": str(tmp_path / "corpus.txt"), "cache_dir": str(tmp_path / "cache")}
    found = find_trained_lm(run, data, spec.canonical_hash())  # the vocabulary from the run's corpus
    assert isinstance(found, TrainedLM) and found.symbols == corpus.symbols
    assert "not c2-x" in find_trained_lm(run, data, "c2-x")
    (tmp_path / "other.txt").write_text(TEXT.upper())
    assert "not the one it was trained on" in find_trained_lm(run, {"path": str(tmp_path / "other.txt"),
                                                                    "cache_dir": str(tmp_path / "cache")})
    save_vocab(run, corpus.symbols[:-1], "chars")
    n = len(corpus.symbols)
    assert f"has {n - 1} symbols, the model {n}" in find_trained_lm(run)
    save_vocab(run, corpus.symbols, "chars")
    assert isinstance(find_trained_lm(run), TrainedLM)  # vocab.json: no corpus needed
    (run / "result.json").write_text(json.dumps({**lm.result, "divergence": "step 3: loss is nan"}))
    assert "diverged (step 3: loss is nan)" in find_trained_lm(run)
    torch.save(model.rnn.state_dict(), run / "weights.pt")
    (run / "result.json").write_text(json.dumps(lm.result))
    assert "is not a character model's state dict" in find_trained_lm(run)


def test_export_without_a_trained_model_says_so(tmp_path):
    out = export_cell(known_cell("lstm"), tmp_path / "out", speed=False)
    card = (out / "README.md").read_text()
    assert "**No trained model is included**: the cell did not come from a training run" in card
    assert not (out / "sample.py").exists() and not (out / "model.pt").exists()
    out = export_cell(known_cell("lstm"), tmp_path / "out2", lm="no weights.pt in runs/x", speed=False)
    assert "**No trained model is included**: no weights.pt in runs/x" in (out / "README.md").read_text()


def test_card_states_the_speed_against_torch_lstm(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nas.cell.draw", None)  # no picture: this test is about the card
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    weights = CellRNN(known_cell("gru"), 8, 8).state_dict()  # small sizes: a cheap measurement
    out = export_cell(known_cell("gru"), tmp_path / "out", weights=weights)
    card = (out / "README.md").read_text()
    assert "## Speed" in card and "| `torch.nn.LSTM` |" in card and "| ratio |" in card
    assert "nas.compile.CellRNN" in card and "one CPU thread" in card
    speed = measure_speed(out / "gru.py", "GruRNN", (1, 8, 8), steps=5, batch=2)
    assert all(speed[k] > 0 for k in ("plain_forward_ms", "lstm_forward_ms", "plain_train_ms", "lstm_train_ms"))
    assert speed["forward_ratio"] == speed["plain_forward_ms"] / speed["lstm_forward_ms"]
    assert "input 8, hidden 8, 1 layer(s)" in card
    assert torch.get_num_threads() == threads  # measured on one thread, the setting restored
    busy = {**speed, "load": 6.0}
    assert "was busy with other work while measuring (load 6.0 per core)" in speed_section("GruRNN", busy)
    assert "was busy" not in speed_section("GruRNN", {**speed, "load": 0.5})
    assert 1 <= speed["rounds"] <= 3 and "after a warm-up" in card
    big = measure_speed(out / "gru.py", "GruRNN", (1, 8, 8), steps=5, batch=2, budget_s=0.0)
    assert big["rounds"] == 0 and "one round, warm-up costs included" in speed_section("GruRNN", big)
