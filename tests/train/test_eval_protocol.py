"""The one scoring protocol (nas.lm.split_bpc): segments from a zero state, every character once,
independent of the evaluation batch size; subsets, the final-evaluation cap, divergence rules,
progress lines and the seed's data order."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

import nas.train
from nas.cell import known_cell
from nas.config import TrainConfig
from nas.data import batchify, load_corpus
from nas.lm import CharLM, eval_segments, split_bpc
from nas.train import data_offset, evaluate

CPU = torch.device("cpu")
TINY = TrainConfig(steps=20, batch_size=8, seq_len=32, hidden_size=32, eval_every=10, eval_chars=2000,
                   state_span=256, sample_chars=0, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model(corpus):
    torch.manual_seed(0)
    return CharLM(known_cell("lstm"), corpus.vocab_size, 24)


def reference_bpc(model, ids, segment, burn_in=0):
    """Each segment run alone from a zero state after its burn-in: the definition, one at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, segment):
            pre = min(burn_in, start)
            piece = torch.as_tensor(np.asarray(ids[start - pre:start + segment + 1], dtype=np.int64))
            logits, _ = model(piece[:-1].view(-1, 1))
            total += torch.nn.functional.cross_entropy(logits[pre:].flatten(0, 1), piece[pre + 1:],
                                                       reduction="sum").item()
            count += len(piece) - 1 - pre
    assert count == len(ids) - 1  # every character but the first is predicted once
    return total / count / math.log(2)


@pytest.mark.parametrize("burn_in", [0, 40, 500])
def test_score_does_not_depend_on_the_batch_size(corpus, model, burn_in):
    ids = corpus.val[:5000]
    scores = [split_bpc(model, ids, 300, b, CPU, burn_in=burn_in) for b in (1, 3, 16)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) == pytest.approx(scores[2], abs=1e-5)
    assert scores[0] == pytest.approx(reference_bpc(model, ids, 300, burn_in), abs=1e-5)


def test_one_segment_over_the_whole_split_is_one_pass_from_zero_state(corpus, model):
    ids = corpus.val[:801]
    inp = torch.as_tensor(ids[:-1].astype("int64")).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(inp)
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.as_tensor(ids[1:].astype("int64")))
    assert split_bpc(model, ids, 800, 4, CPU) == pytest.approx(full.item() / math.log(2), rel=1e-5)
    # shorter segments restart from a zero state, which costs a little: the score moves
    assert abs(split_bpc(model, ids, 37, 4, CPU) - full.item() / math.log(2)) > 1e-5


def test_segments_cover_every_character_once_and_subsets_spread_evenly():
    cuts = eval_segments(1001, 300)
    assert cuts == [(0, 300), (300, 300), (600, 300), (900, 100)]
    sub = eval_segments(100_001, 1000, max_chars=10_000)
    assert len(sub) == 10 and all(n == 1000 for _, n in sub)
    starts = [s for s, _ in sub]
    assert starts == [5000 + 10_000 * i for i in range(10)]  # the middles of 10 equal parts
    assert len(eval_segments(100_001, 1000, max_chars=1)) == 1  # rounded up to whole segments
    assert eval_segments(1001, 300, max_chars=5000) == cuts
    with pytest.raises(ValueError, match="eval_segments"):
        eval_segments(1, 300)


def test_intermediate_evaluations_use_the_subset_and_the_final_one_the_cap(corpus, monkeypatch):
    seen = []
    real = nas.train.split_bpc

    def spy(model, ids, segment, batch_size, device, max_chars=None, *args):
        seen.append((len(ids), segment, max_chars))
        return real(model, ids, segment, batch_size, device, max_chars, *args)

    monkeypatch.setattr(nas.train, "split_bpc", spy)
    cfg = TrainConfig(**{**TINY.__dict__, "final_eval_chars": 3000, "test": True})
    r = evaluate(known_cell("lstm"), cfg, 0, corpus)
    n_val = len(corpus.val)
    assert seen == [(n_val, 256, 2000), (n_val, 256, 2000), (n_val, 256, 3000), (len(corpus.test), 256, 3000)]
    assert r.divergence is None and "val 3,072 of" in r.protocol  # 12 whole segments of 256
    assert "segments of 256 from a zero state after a burn-in of 128" in r.protocol


def test_final_evaluation_is_the_whole_split_by_default(corpus):
    r = evaluate(known_cell("lstm"), TINY, 0, corpus)
    assert f"val {len(corpus.val) - 1:,} of {len(corpus.val) - 1:,} chars" in r.protocol


@pytest.mark.parametrize("fake,reason", [(7.0, "uniform bound"), ("gap", "max_val_gap")])
def test_blow_ups_are_divergence_not_scores(corpus, monkeypatch, fake, reason):
    def blown(model, ids, *args):
        return 7.0 if fake == 7.0 else 6.0  # log2(66) = 6.04; train bpc after 10 steps is ~5.3

    monkeypatch.setattr(nas.train, "split_bpc", blown)
    cfg = TrainConfig(**{**TINY.__dict__, "max_val_gap": 0.1}) if fake == "gap" else TINY
    r = evaluate(known_cell("lstm"), cfg, 0, corpus)
    assert r.val_bpc is None and r.divergence is not None and reason in r.divergence, r.divergence
    assert r.divergence.startswith("step 10: val bpc")


def test_progress_lines_during_training_and_evaluation(corpus, monkeypatch, caplog):
    monkeypatch.setattr(nas.train, "LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="nas.train"):
        evaluate(known_cell("lstm"), TrainConfig(**{**TINY.__dict__, "eval_every": 20}), 0, corpus)
    lines = [r.getMessage() for r in caplog.records if r.name == "nas.train"]
    assert any("step 5/20, train bpc" in m for m in lines), lines[:5]
    n = f"{(len(corpus.val) - 1) / 1e3:.0f}k"
    assert any(m.startswith("lstm step 20: evaluating val:") and m.endswith(f"/ {n} chars") for m in lines)


def test_the_seed_picks_the_data_order(corpus):
    n = len(corpus.train)
    offsets = {data_offset(TINY, s, n) for s in range(5)}
    assert len(offsets) == 5 and data_offset(TINY, 3, n) == data_offset(TINY, 3, n)
    assert data_offset(TrainConfig(seed_data_order=False), 3, n) == 0
    ids = np.arange(10)
    assert batchify(ids, 2, 1, offset=3).tolist() == [[3, 4, 5, 6, 7], [8, 9, 0, 1, 2]]
    assert batchify(ids, 2, 1, offset=13).tolist() == batchify(ids, 2, 1, offset=3).tolist()
