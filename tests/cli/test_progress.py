"""Progress when not on a terminal: the lines a user reads in `nas-search ... > out.log 2>&1`.

One line per finished trial, per baseline and per final retraining, and a line at least every
nas.train.LOG_EVERY seconds of a long training or evaluation, also from worker processes. The
interval is lowered to 0 here (a line at every step) instead of waiting 30 s.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

import nas.train
from nas.cell import known_cell
from nas.config import TrainConfig
from nas.data import load_corpus
from nas.search.results import best_so_far, trial_line
from nas.search.retrain import process_pool
from nas.search.worker import relay

TINY = TrainConfig(steps=6, batch_size=4, seq_len=16, hidden_size=16, eval_every=3, eval_chars=300,
                   final_eval_chars=2000, sample_chars=0, progress=False)
STEP_LINE = re.compile(r"lstm: step (\d+)/6, train bpc \d+\.\d\d, [\d,]+ chars/s, eta \d+s")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from test_search import small_corpus

    folder = tmp_path_factory.mktemp("corpus")
    return load_corpus(small_corpus(folder), cache_dir=folder / "cache")


def new_cell_json() -> str:
    """A cell of the highway space that is no reference cell."""
    from nas.cell import identify
    from nas.search_spaces import get_space

    space, study = get_space("highway"), optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    while True:
        spec = space.sample(study.ask())
        if identify(spec.canonical()) is None:
            return spec.canonical().to_json(indent=None)


def lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_a_training_without_a_bar_logs_its_steps_and_evaluations(corpus, caplog, monkeypatch):
    monkeypatch.setattr(nas.train, "LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="nas.train"):
        nas.train.evaluate(known_cell("lstm"), TINY, 0, corpus, desc="lstm")
    got = lines(caplog, "nas.train")
    steps = [int(m[1]) for m in map(STEP_LINE.fullmatch, got) if m]
    assert steps == [1, 2, 3, 4, 5, 6], got
    assert any(re.fullmatch(r"lstm step 3: evaluating val: \S+ / \S+ chars", line) for line in got), got


def test_at_the_default_interval_a_short_training_is_quiet(corpus, caplog):
    assert nas.train.LOG_EVERY == 30.0
    with caplog.at_level(logging.INFO, logger="nas.train"):
        nas.train.evaluate(known_cell("lstm"), TINY, 0, corpus, desc="lstm")
    assert lines(caplog, "nas.train") == []


def test_no_lines_under_a_progress_bar(corpus, caplog, monkeypatch):
    monkeypatch.setattr(nas.train, "LOG_EVERY", 0.0)
    cfg = TrainConfig(**{**TINY.__dict__, "progress": True})
    with caplog.at_level(logging.INFO, logger="nas.train"):
        nas.train.evaluate(known_cell("lstm"), cfg, 0, corpus, desc="lstm")
    assert lines(caplog, "nas.train") == []


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (45, "45s"), (240, "4m"), (7500, "2h05m")])
def test_eta_reads_as_a_duration(seconds, text):
    assert nas.train._duration(seconds) == text


def _trial(number: int, state: TrialState, value: float | None = None, **attrs) -> optuna.trial.FrozenTrial:
    attrs.setdefault("cell_json", known_cell(attrs["reference"]).to_json(indent=None) if "reference" in attrs
                     else new_cell_json())
    t = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
    t.number = number
    return t


def test_one_line_per_trial_names_the_cell_state_score_and_best_so_far():
    trials = [_trial(0, TrialState.COMPLETE, 2.5, reference="lstm", nas_state="complete"),
              _trial(1, TrialState.COMPLETE, 2.1, nas_state="complete"),
              _trial(2, TrialState.FAIL, nas_state="diverged", reason="step 4: training loss is nan"),
              _trial(3, TrialState.COMPLETE, 2.1, nas_state="duplicate", duplicate_of=1)]
    got = [trial_line(t, best_so_far(trials, t.number)) for t in trials]
    assert got == [
        "trial 0 = lstm: complete, val bpc 2.5000; best so far 2.5000 (trial 0 = lstm)",
        "trial 1 (new): complete, val bpc 2.1000; best so far 2.1000 (trial 1 (new))",
        "trial 2 (new): diverged, step 4: training loss is nan; best so far 2.1000 (trial 1 (new))",
        "trial 3 (new): duplicate, val bpc 2.1000 (same cell as trial 1); best so far 2.1000 (trial 1 (new))"]
    assert trial_line(trials[2], None) == "trial 2 (new): diverged, step 4: training loss is nan"


def test_a_worker_process_lines_are_logged_on_their_own_loggers(caplog):
    with caplog.at_level(logging.INFO):
        level = relay(1, "worker 1: INFO nas.train: trial 3: step 12/40, train bpc 2.41, 900 chars/s, eta 4s")
        level = relay(1, "worker 1: ERROR nas.search: trial 4 failed", level)
        level = relay(1, "Traceback (most recent call last):", level)
        relay(1, "nas-worker: error: worker w1 stopped: ENOSPC", logging.INFO)
    got = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [
        ("nas.train", "INFO", "worker 1: trial 3: step 12/40, train bpc 2.41, 900 chars/s, eta 4s"),
        ("nas.search", "ERROR", "worker 1: trial 4 failed"),
        ("nas.search.worker", "ERROR", "worker 1: Traceback (most recent call last):"),  # continues the error
        ("nas.search.worker", "WARNING", "worker 1: nas-worker: error: worker w1 stopped: ENOSPC")]
    assert level == logging.ERROR


def test_a_pool_process_lines_reach_this_process_loggers(caplog):
    """Final retrainings in a process pool: their 30 s lines land where this process logs."""
    with caplog.at_level(logging.INFO), process_pool(1) as pool:
        pool.submit(logging.getLogger("nas.train").info, "lstm seed 1: step 5/10").result()
        pool.submit(logging.getLogger("nas.train").debug, "not shown").result()
    assert lines(caplog, "nas.train") == ["lstm seed 1: step 5/10"]


def test_a_worker_process_writes_its_progress_and_trials(tmp_path):
    """`python -m nas.search.worker` (what nas-search workers=N starts) logs each trial and, at the
    interval, its training's steps, in the format LocalWorker relays."""
    from test_search import config

    from nas.search.study import open_study

    cfg = config(tmp_path, "study=w", "n_trials=1", "baselines=[]", "search_space=highway", "controller=random")
    open_study(cfg, multi_objective=False)
    code = ("import sys, nas.train; nas.train.LOG_EVERY = 0.0; from nas.search.worker import main; "
            "main(sys.argv[1:])")
    p = subprocess.run([sys.executable, "-c", code, "--study", "w", "--out-dir", cfg.out_dir, "--threads", "1",
                        "--index", "3"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    got = p.stderr.splitlines()
    assert any(re.fullmatch(r"worker 3: INFO nas\.train: trial 0: step 6/6, train bpc .*, eta 0s", x) for x in got), got
    [line] = [x for x in got if x.startswith("worker 3: INFO nas.search: trial 0 ")]
    assert re.search(r": (complete|screened|diverged|invalid), .*", line), line


def test_a_resumed_search_sums_up_its_earlier_trials_in_one_line(caplog):
    from nas.search import progress

    study = optuna.create_study(study_name="resumed")
    study.add_trial(_trial(0, TrialState.COMPLETE, 2.5, reference="lstm", nas_state="complete"))
    study.add_trial(_trial(1, TrialState.FAIL, nas_state="screened", reason="screen: nan"))
    with caplog.at_level(logging.INFO, logger="nas.search"):
        assert progress.progress_bar(study, 3, show=False) is None
        study.add_trial(_trial(2, TrialState.COMPLETE, 2.25, nas_state="complete"))
        progress.tick(None, study)
        progress.tick(None, study)  # each trial once
    assert lines(caplog, "nas.search") == [
        "study resumed: 2 trials finished before this run; best so far 2.5000 (trial 0 = lstm)",
        "trial 2 (new): complete, val bpc 2.2500; best so far 2.2500 (trial 2 (new))"]
