"""screen(spec, cfg, corpus, seed): a few plain-torch steps that stop cells which would diverge at
once, before a trial pays for kernels and training."""

from __future__ import annotations

import pytest

import nas.compile.modules
from nas.cell import CellSpec, known_cell
from nas.cell.known import f, lin
from nas.config import TrainConfig
from nas.data import load_corpus
from nas.train import evaluate, screen

CFG = TrainConfig(steps=20, batch_size=8, seq_len=32, hidden_size=32, eval_every=10, eval_chars=500,
                  sample_chars=0, progress=False)
# h' = (W x + U h + 1)^2: the state squares at every step and overflows within a chunk
SQUARE = CellSpec.from_dict({"name": "square", "state": ["h"], "outputs": {"h": "h_new"},
                             "nodes": {"a": lin("x", "h", bias_init=1.0), "h_new": f("mul", "a", "a")}})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("name", ["lstm", "gru", "mut3"])
def test_reference_cells_pass(corpus, name):
    assert screen(known_cell(name), CFG, corpus) is None


def test_exploding_cell_is_stopped_with_the_reason(corpus):
    reason = screen(SQUARE, CFG, corpus)
    assert reason is not None and reason.startswith("screen: ") and "explode" in reason, reason
    # and evaluate would indeed have diverged
    assert evaluate(SQUARE, CFG, 0, corpus).divergence is not None


def test_unstable_setting_is_stopped_at_the_first_steps(corpus):
    cfg = TrainConfig(**{**CFG.__dict__, "optimizer": "sgd", "lr": 1e30, "clip_norm": 1e38})
    reason = screen(known_cell("rnn_tanh"), cfg, corpus)
    assert reason is not None and reason.startswith("screen: ") and "after" in reason, reason


def test_screen_builds_no_kernel(corpus, monkeypatch):
    def fused(*args):
        raise AssertionError("screen ran the fused path")

    monkeypatch.setattr(nas.compile.modules, "fused_sequence", fused)
    assert screen(known_cell("lstm"), CFG, corpus) is None


def test_screen_checks_the_config_first(corpus):
    with pytest.raises(ValueError, match="trainer.clip_norm"):
        screen(known_cell("lstm"), TrainConfig(**{**CFG.__dict__, "clip_norm": -1.0}), corpus)


def test_screen_leaves_the_evaluation_unchanged(corpus):
    before = evaluate(known_cell("gru"), CFG, 1, corpus)
    assert screen(known_cell("gru"), CFG, corpus, seed=1) is None
    after = evaluate(known_cell("gru"), CFG, 1, corpus)
    assert (before.val_bpc, before.curve) == (after.val_bpc, after.curve)
