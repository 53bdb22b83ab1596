"""The char-LM evaluator: learning, divergence, state carry, determinism, parameter matching."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import nas.train
from nas.cell import KNOWN_CELLS, known_cell
from nas.config import TrainConfig
from nas.data import load_corpus
from nas.lm import CharLM, count_params, match_hidden_size, sample
from nas.train import check_config, evaluate, split_bpc

TINY = TrainConfig(steps=40, batch_size=8, seq_len=32, hidden_size=32, lr=1e-2, eval_every=20,
                   eval_chars=2000, sample_chars=40, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(cache_dir=tmp_path_factory.mktemp("cache"))


def test_lstm_learns_tiny_shakespeare(corpus):
    cfg = TrainConfig(**{**TINY.__dict__, "steps": 150, "batch_size": 16, "hidden_size": 64,
                         "lr": 2e-2, "eval_every": 50})
    r = evaluate(known_cell("lstm"), cfg, seed=0, corpus=corpus)
    assert r.divergence is None
    # unigram entropy of the corpus is 4.78 bits/char: a model that learned anything beats it clearly
    assert r.val_bpc < 3.6, r
    assert r.steps == 150 and r.tokens == 150 * 16 * 32
    assert [s for s, _ in r.curve] == [50, 100, 150]
    assert r.curve[-1][1] < r.curve[0][1]
    assert r.params == CharLM(known_cell("lstm"), corpus.vocab_size, 64).num_params()


def test_same_seed_same_numbers_on_cpu(corpus):
    a = evaluate(known_cell("gru"), TINY, seed=3, corpus=corpus)
    b = evaluate(known_cell("gru"), TINY, seed=3, corpus=corpus)
    c = evaluate(known_cell("gru"), TINY, seed=4, corpus=corpus)
    assert (a.val_bpc, a.curve, a.train_curve) == (b.val_bpc, b.curve, b.train_curve)
    assert a.val_bpc != c.val_bpc


@pytest.mark.parametrize("cell,lr", [("rnn_tanh", 1e30), ("lstm", 1e38)])
def test_unstable_setting_returns_diverged_not_raise(corpus, cell, lr, tmp_path):
    cfg = TrainConfig(**{**TINY.__dict__, "optimizer": "sgd", "lr": lr, "clip_norm": 1e38})
    r = evaluate(known_cell(cell), cfg, seed=0, corpus=corpus, out_dir=tmp_path)
    assert r.divergence is not None and r.divergence.startswith("step "), r.divergence
    assert r.val_bpc is None and r.test_bpc is None and r.train_bpc is None
    assert json.loads((tmp_path / "result.json").read_text())["divergence"] == r.divergence


def test_callback_sees_intermediate_scores_and_can_stop_the_run(corpus):
    seen = []

    class Stop(Exception):
        pass

    def cb(step, bpc):
        seen.append((step, bpc))
        if step >= 20:
            raise Stop

    with pytest.raises(Stop):
        evaluate(known_cell("lstm"), TINY, seed=0, corpus=corpus, callback=cb)
    assert [s for s, _ in seen] == [20] and math.isfinite(seen[0][1])


def test_training_carries_the_state_within_the_span_and_resets_it_after(corpus, monkeypatch):
    """State carry in training: each stream restarts from a zero state once every
    state_span // seq_len chunks (the span scoring reads from a zero state), streams staggered."""
    restarted = []
    forward = CharLM.forward

    def spy(self, ids, state=None):
        if torch.is_grad_enabled():  # training steps, not evaluations
            zero = None if state is None else {b for b in range(ids.shape[1])
                                               if all(bool((s[:, b] == 0).all()) for s in state)}
            restarted.append(zero)
        return forward(self, ids, state)

    monkeypatch.setattr(CharLM, "forward", spy)
    cfg = TrainConfig(**{**TINY.__dict__, "steps": 7, "state_span": 3 * 32 + 5})  # 3 chunks
    evaluate(known_cell("lstm"), cfg, 0, corpus)
    assert restarted[0] is None  # a pass starts from a zero state
    assert restarted[1:] == [{3, 4, 5}, {1, 2}, {0, 6, 7}] * 2
    # every stream restarts once in any 3 consecutive chunks: no carry beyond the span
    assert all(set().union(*restarted[k:k + 3]) == set(range(8)) for k in (1, 2, 3, 4))


def test_split_bpc_is_exported_and_scores_in_bits(corpus):
    torch.manual_seed(0)
    model = CharLM(known_cell("gru"), corpus.vocab_size, 16)
    bpc = split_bpc(model, corpus.val[:1003], 200, 4, torch.device("cpu"))
    assert abs(bpc - math.log2(corpus.vocab_size)) < 0.2  # an untrained model is near uniform


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_parameter_matching_within_5_percent(name, corpus):
    spec = known_cell(name)
    budget = 200_000
    h = match_hidden_size(spec, corpus.vocab_size, budget)
    n = count_params(spec, corpus.vocab_size, h)
    assert abs(n - budget) / budget < 0.05, (name, h, n)
    assert n == CharLM(spec, corpus.vocab_size, h).num_params()


def test_parameter_matching_gives_wide_cells_fewer_units(corpus):
    lstm = match_hidden_size(known_cell("lstm"), corpus.vocab_size, 300_000)
    nas = match_hidden_size(known_cell("nas_cell"), corpus.vocab_size, 300_000)
    rnn = match_hidden_size(known_cell("rnn_tanh"), corpus.vocab_size, 300_000)
    assert nas < lstm < rnn


def test_budget_in_tokens_and_seconds(corpus):
    r = evaluate(known_cell("lstm"), TrainConfig(**{**TINY.__dict__, "tokens": 8 * 32 * 5}), 0, corpus)
    assert r.steps == 5
    r = evaluate(known_cell("lstm"), TrainConfig(**{**TINY.__dict__, "steps": 10**6, "seconds": 0.5}),
                 0, corpus)
    assert r.divergence is None and 0 < r.steps < 10**6


def test_run_directory_and_sample(corpus, tmp_path):
    r = evaluate(known_cell("lstm"), TINY, seed=0, corpus=corpus, out_dir=tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    for key in ("cell_hash", "params", "hidden_size", "steps", "tokens", "seconds", "val_bpc",
                "test_bpc", "divergence"):
        assert key in saved
    assert saved["val_bpc"] == r.val_bpc and saved["test_bpc"] is None
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    model = CharLM(known_cell("lstm"), corpus.vocab_size, r.hidden_size)
    model.load_state_dict(state)
    assert (tmp_path / "cell.json").exists() and len((tmp_path / "sample.txt").read_text()) == 40
    text = sample(model, corpus.encode, corpus.decode, 25, temperature=0.5, seed=1)
    assert len(text) == 25 and text == sample(model, corpus.encode, corpus.decode, 25, 0.5, seed=1)


def test_test_bpc_on_request(corpus):
    r = evaluate(known_cell("lstm"), TrainConfig(**{**TINY.__dict__, "test": True}), 0, corpus)
    assert r.test_bpc is not None and math.isfinite(r.test_bpc)


@pytest.mark.parametrize("field,value", [
    ("steps", 0), ("lr", -1.0), ("dropout", 1.5), ("optimizer", "adagrad"), ("lr_schedule", "cyclic"),
    ("batch_size", 0), ("clip_norm", -1.0), ("clip_norm", float("nan")), ("max_bpc", float("nan")),
    ("max_val_gap", float("inf")), ("embedding_size", 0), ("warmup_steps", -1), ("tokens", -5),
    ("seconds", -1.0), ("seconds", float("nan")), ("sample_chars", -1), ("temperature", 0.0),
    ("temperature", float("nan")), ("threads", -1), ("device", "banana"), ("hidden_size", 100_000),
    ("embedding_size", 100_000), ("lr", float("inf")), ("momentum", 1.0), ("weight_decay", -0.1),
    ("lr_final_ratio", 1.5), ("state_span", 0), ("eval_chars", 0), ("final_eval_chars", 0),
    ("eval_batch_size", 0), ("param_budget", 0), ("steps", 2.5), ("steps", True), ("backend", "gpu"),
    ("cuda_graphs", True)])
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"^trainer\.{field}: expected .*, got {re.escape(repr(value))}$"):
        check_config(TrainConfig(**{**TINY.__dict__, field: value}))


def test_the_trainer_backend_setting_reaches_the_model(corpus, monkeypatch):
    """trainer.backend / trainer.cuda_graphs choose the cell's generated code (speed only): the model
    gets them, and the torch code scores what the default code scores."""
    built = []
    real = nas.train.build_model
    monkeypatch.setattr(nas.train, "build_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    cfg = TrainConfig(**{**TINY.__dict__, "backend": "torch", "cuda_graphs": "off"})
    torch_code = evaluate(known_cell("gru"), cfg, 0, corpus)
    assert [m.rnn.policy.backend for m in built] == ["torch"]
    assert built[0].rnn.policy.cuda_graphs == "off"
    default = evaluate(known_cell("gru"), TINY, 0, corpus)
    assert built[1].rnn.policy.backend == "auto"
    assert torch_code.val_bpc == pytest.approx(default.val_bpc, abs=1e-3)


def test_the_check_is_torch_free_and_runs_before_any_work(corpus, monkeypatch):
    """TrainConfig.check needs no torch (CLIs call it first); evaluate calls it before training,
    so a bad temperature no longer fails only after the whole run."""
    import subprocess
    import sys

    code = ("import sys; from nas.config import TrainConfig; TrainConfig().check(); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setattr(nas.train, "build_model", None)  # must not be reached
    with pytest.raises(ValueError, match="trainer.temperature"):
        evaluate(known_cell("lstm"), TrainConfig(**{**TINY.__dict__, "temperature": 0.0}), 0, corpus)


def test_good_settings_pass_on_a_config_node():
    from omegaconf import OmegaConf

    check_config(TrainConfig())
    TrainConfig.check(OmegaConf.structured(TrainConfig(device="cuda:1", seconds=2)))


def test_zero_width_embedding_is_an_error_not_the_default(corpus):
    with pytest.raises(ValueError, match="CharLM: expected hidden_size and embedding_size >= 1"):
        CharLM(known_cell("lstm"), corpus.vocab_size, 16, embedding_size=0)
    assert count_params(known_cell("lstm"), corpus.vocab_size, 16, embedding_size=8) == \
        CharLM(known_cell("lstm"), corpus.vocab_size, 16, embedding_size=8).num_params()
