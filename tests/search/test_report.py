"""The final comparison (nas.search.report): which cells are compared, mean +- std over seeds, caching
in the study, the table (markdown, CSV) and plots, the retrain pool, the finalists' steps, the
paired differences and the verdicts."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState, create_trial

import nas.search.report
from nas.cell import known_cell
from nas.cli import CONF_DIR
from nas.config import SearchApp, search_app
from nas.search.report import (
    Comparison,
    ComparisonRow,
    PairedDifference,
    final_comparison,
    paired_difference,
    top_cells,
)


def config(tmp_path: Path, *overrides: str) -> SearchApp:
    """Tiny trainer on the first 40,000 characters of Tiny Shakespeare."""
    import nas.cli.search
    import nas.corpora

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((Path(nas.corpora.__file__).parent / "tinyshakespeare.txt").read_text()[:40_000])
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[
            "trainer=tiny", "trainer.steps=6", "trainer.eval_every=3", "trainer.eval_chars=500",
            "trainer.sample_chars=0", "workers=1", "baselines=[lstm]", "report.seeds=2", "report.top_k=2", "report.steps=null",
            f"out_dir={tmp_path / 'study'}", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
            *overrides])
    return search_app(OmegaConf.to_container(cfg, resolve=True))


def new_cells(count: int):
    """Random cells that are none of the reference cells."""
    from random_cells import random_cells

    from nas.cell import identify

    return [c for c in random_cells(7, 30) if identify(c) is None][:count]


NEW = new_cells(3)


def cell_trial(spec, value: float, **attrs) -> optuna.trial.FrozenTrial:
    spec = known_cell(spec) if isinstance(spec, str) else spec
    user = {"cell_json": spec.to_json(indent=None), "cell_hash": spec.canonical_hash(),
            "nas_state": "complete", **attrs}
    return create_trial(value=value, user_attrs=user)


def synthetic_study() -> optuna.Study:
    """NEW[1] best, a duplicate of it, NEW[0] second, another NEW[1] trial, a failed and a pruned one,
    NEW[2], and a reference cell (gru) that scores best of all but is no discovery."""
    study = optuna.create_study(study_name="syn")
    study.add_trial(cell_trial(NEW[0], 4.5))
    study.add_trial(cell_trial(NEW[1], 4.0))
    study.add_trial(cell_trial(NEW[1], 3.9, duplicate_of=1, nas_state="duplicate"))
    study.add_trial(cell_trial(NEW[1], 4.2))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"nas_state": "invalid", "reason": "x"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={3: 3.0}))
    study.add_trial(cell_trial(NEW[2], 5.0))
    study.add_trial(cell_trial("gru", 3.0))
    return study


def test_top_cells_are_distinct_complete_new_and_not_duplicates():
    top = top_cells(synthetic_study(), 3)
    assert [s.label for s in top] == ["trial 1 (new)", "trial 0 (new)", "trial 6 (new)"]
    assert {s.role for s in top} == {"trial"}
    assert top_cells(synthetic_study(), 0) == []


def test_table_as_markdown_and_csv():
    rows = (ComparisonRow("trial 3", "trial", "c1-a", 1.25, 0.01, 3, 1.3, 1000, 2500.0, trial=3),
            ComparisonRow("lstm", "baseline", "c1-b", 1.3, 0.02, 2, 1.35, 1100, 3000.0, diverged=1),
            ComparisonRow("mut2", "baseline", "c1-c", None, None, 0, None, 900, None, diverged=3))
    c = Comparison("s", "b", (0, 1, 2), rows, ())
    md = c.markdown()
    assert "| trial 3 | trial | 1.2500 ± 0.0100 | 3 | 1.3000 | 1,000 | 2,500 | `c1-a` |" in md
    assert "| 2 (+1 diverged) |" in md and "| mut2 | baseline | diverged |" in md
    got = list(csv.DictReader(io.StringIO(c.csv())))
    assert [r["label"] for r in got] == ["trial 3", "lstm", "mut2"]
    assert got[0]["test_bpc_mean"] == "1.25" and got[0]["trial"] == "3" and got[2]["test_bpc_mean"] == ""
    assert c.best() is rows[0]


def test_final_comparison_retrains_with_seeds_and_caches_in_the_study(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    study = synthetic_study()
    logged = []

    class Recorder:
        def log_final(self, study, label, subject, result, cfg):
            logged.append((label, subject, result["seed"]))

    c = final_comparison(study, cfg, Recorder())
    assert sorted(r.label for r in c.rows) == ["lstm", "trial 0 (new)", "trial 1 (new)"]
    subjects = [("trial 1 (new)", "trial"), ("trial 0 (new)", "trial"), ("lstm", "baseline")]
    assert c.seeds == (0, 1)
    assert sorted(logged) == sorted((label, role, seed) for label, role in subjects for seed in (0, 1))
    for r in c.rows:
        assert r.n_seeds == 2 and r.test_bpc > 0 and r.test_std >= 0 and r.params > 0 and r.chars_per_sec > 0
    tests = [r.test_bpc for r in c.rows]
    assert tests == sorted(tests)
    assert {Path(f).name for f in c.files} == {"comparison.md", "comparison.csv", "learning_curves.png",
                                               "test_bpc_vs_params.png", "best_so_far.png"}
    for f in c.files:
        data = Path(f).read_bytes()
        assert data.startswith(b"\x89PNG") if f.endswith(".png") else b"lstm" in data
    assert len([k for k in study.user_attrs if k.startswith("final:")]) == 6
    assert [(p.cell, p.baseline, p.n) for p in c.pairs] == [("trial 1 (new)", "lstm", 2),
                                                              ("trial 0 (new)", "lstm", 2)]
    assert all(p.low <= p.mean <= p.high for p in c.pairs)
    assert "lstm:" in c.markdown() and "paired by seed" in c.markdown()
    # a rerun (or nas-report) reuses every retrain: nothing is trained again
    monkeypatch.setattr("nas.train.evaluate", lambda *a, **k: pytest.fail("retrained a cached result"))
    again = final_comparison(study, cfg)
    assert again.rows == c.rows


def test_retrain_pool_gives_the_same_results(tmp_path):
    cfg = config(tmp_path, "report.top_k=0")
    one = final_comparison(optuna.create_study(study_name="a"), cfg)
    two = final_comparison(optuna.create_study(study_name="b"), replace(cfg, workers=2))
    (r1,), (r2,) = one.rows, two.rows
    assert r1.label == r2.label == "lstm" and r2.n_seeds == 2
    assert r2.test_bpc == pytest.approx(r1.test_bpc, rel=1e-3)
    assert r2.test_std == pytest.approx(r1.test_std, rel=0.05, abs=1e-4)


def test_report_module_draws_without_pyplot():
    # figures are built on an Agg canvas: none is left registered in pyplot's global state
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    nas.search.report._figure("x", "y", "t")
    assert plt.get_fignums() == before


def test_nas_report_settings_come_from_the_study_unless_given():
    from nas.cli.report import report_config

    stored = {"study": "s", "out_dir": "old", "workers": 4, "baselines": ["lstm", "gru"], "seed": 7,
              "storage": {"url": None}, "trainer": {"steps": 9},
              "tracking": {"enabled": True, "uri": "http://team:5000", "experiment": None, "retries": 3,
                           "timeout": 10.0},
              "report": {"enabled": True, "top_k": 5, "seeds": 2}}
    given = {"study": "s", "out_dir": "new", "workers": None, "baselines": None, "threads": None,
             "device": "auto", "storage": {"url": None},
             "tracking": {"enabled": True, "uri": None, "experiment": None, "retries": 3, "timeout": 10.0},
             "report": {"enabled": True, "top_k": 3, "seeds": 3}}
    cfg = report_config(stored, given, ["study=s", "out_dir=new", "report.seeds=3"])
    assert cfg["report"] == {"enabled": True, "top_k": 5, "seeds": 3}
    assert cfg["tracking"]["uri"] == "http://team:5000" and cfg["workers"] == 4
    assert cfg["baselines"] == ["lstm", "gru"] and cfg["out_dir"] == "new" and cfg["trainer"] == {"steps": 9}
    cfg = report_config(stored, {**given, "baselines": ["mut1"]}, ["baselines=[mut1]", "tracking.uri=null"])
    assert cfg["baselines"] == ["mut1"] and cfg["tracking"]["uri"] is None


def test_equal_results_share_one_label_on_the_plot():
    from nas.search.report import label_groups

    points = [(99_148, 4.8838, "lstm"), (100_416, 4.8824, "mut1"), (99_450, 4.20, "gru"),
              (100_266, 4.8830, "trial 7 (new)"), (60_000, 4.8830, "small")]
    groups = {tuple(labels): xy for xy, labels in label_groups(points)}
    assert set(groups) == {("mut1", "trial 7 (new)", "lstm"), ("gru",), ("small",)}
    assert groups[("mut1", "trial 7 (new)", "lstm")] == (100_416, 4.8824)  # the best of the group
    assert label_groups([]) == [] and label_groups([(1, 2, "a")]) == [((1, 2), ["a"])]


def test_finalists_are_retrained_for_report_steps():
    from nas.search.report import final_config

    app = search_app({"trainer": {"steps": 300, "lr": 0.01}, "report": {"steps": 600}})
    assert final_config(app).trainer == replace(app.trainer, steps=600) and app.trainer.lr == 0.01
    assert app.trainer.steps == 300  # the search's own config is untouched
    assert final_config(replace(app, report=replace(app.report, steps=None))).trainer.steps == 300


def test_paired_difference_interval_and_verdicts():
    def res(*values):
        return [{"test_bpc": v} for v in values]

    # differences -0.10, -0.12, -0.08: mean -0.10, sd 0.02, t(0.975, 2) = 4.3027
    p = paired_difference("trial 3 (new)", "lstm", res(1.0, 1.1, 1.2), res(1.1, 1.22, 1.28))
    half = 4.302652729911275 * 0.02 / 3 ** 0.5
    assert p.n == 3 and p.mean == pytest.approx(-0.10)
    assert (p.low, p.high) == (pytest.approx(-0.10 - half), pytest.approx(-0.10 + half))
    assert p.verdict == "better"
    assert paired_difference("c", "b", res(1.2, 1.3, 1.25), res(1.0, 1.12, 1.06)).verdict == "worse"
    assert paired_difference("c", "b", res(1.0, 1.3), res(1.1, 1.2)).verdict == "not distinguishable"
    one = paired_difference("c", "b", res(1.0, None), res(1.1, 1.2))
    assert one.n == 1 and one.low is None and one.verdict == "not distinguishable"
    assert paired_difference("c", "b", res(None), res(1.0)).text() == "no paired seeds"


def test_comparison_says_whether_any_new_cell_beat_each_baseline():
    rows = (ComparisonRow("trial 3 (new)", "trial", "c-a", 1.20, 0.01, 3, 1.3, 1000, 1.0, trial=3),
            ComparisonRow("lstm", "baseline", "c-b", 1.30, 0.01, 3, 1.4, 1000, 1.0),
            ComparisonRow("gru", "baseline", "c-c", 1.21, 0.01, 3, 1.3, 1000, 1.0))
    pairs = (PairedDifference("trial 3 (new)", "lstm", 3, -0.1, -0.15, -0.05),
             PairedDifference("trial 3 (new)", "gru", 3, -0.01, -0.04, 0.02))
    c = Comparison("s", "b", (0, 1, 2), rows, (), pairs)
    assert c.verdicts() == [
        "lstm: beaten by trial 3 (new) (-0.1000 [-0.1500, -0.0500]).",
        "gru: no new cell beats it; closest: trial 3 (new), not distinguishable (-0.0100 [-0.0400, +0.0200]).",
    ]
    md = c.markdown()
    assert "| trial 3 (new) | lstm | 3 | -0.1000 [-0.1500, -0.0500] | better |" in md
    assert c.best() is rows[0]
    only_baselines = Comparison("s", "b", (0,), rows[1:], ())
    assert only_baselines.best() is None
    assert "No new cell was retrained" in only_baselines.verdicts()[0]
