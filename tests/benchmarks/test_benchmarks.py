"""The search-trust benchmarks (benchmarks/fidelity.py, controllers.py) at a tiny scale: the JSON has
its fields and sane numbers, and a rerun skips the work already done."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks folder is no package

from benchmarks import controllers, fidelity
from benchmarks.stats import (
    JsonlCache,
    best_so_far,
    cut_survival,
    paired_difference,
    rank_agreement,
    seed_spread_vs_gaps,
    top_k_overlap,
)

TINY = ["--override", "trainer.param_budget=3000", "--override", "trainer.eval_every=2",
        "--override", "trainer.eval_chars=300", "--override", "trainer.batch_size=4",
        "--override", "trainer.seq_len=16", "--threads", "0", "--workers", "1"]


@pytest.fixture
def corpus(tmp_path):
    """A 20k-character slice of the default corpus and a cache folder of its own."""
    from nas.data import default_corpus_path

    path = tmp_path / "small.txt"
    path.write_text(default_corpus_path().read_text()[:20_000])
    return ["--corpus", str(path), "--cache-dir", str(tmp_path / "cache")]


# ---- statistics ------------------------------------------------------------------------------------

def test_rank_agreement_of_monotone_and_reversed_scores():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    same = rank_agreement(x, [v * 2 + 1 for v in x], resamples=300)
    assert same["spearman"] == 1.0 and same["kendall"] == 1.0
    assert same["spearman_ci95"] == [1.0, 1.0] and same["resamples_used"] > 250
    rev = rank_agreement(x, x[::-1], resamples=300)
    assert rev["spearman"] == -1.0 and rev["kendall_ci95"] == [-1.0, -1.0]
    assert rank_agreement([1.0, 2.0], [2.0, 1.0])["spearman"] is None  # too few cells
    with pytest.raises(ValueError, match="paired"):
        rank_agreement([1.0, 2.0, 3.0], [1.0, 2.0])


def test_overlap_spread_paired_difference_and_best_so_far():
    short = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    long = {"a": 1.5, "b": 1.0, "c": 3.5, "d": 0.5}
    assert top_k_overlap(short, long, 2)["overlap"] == 1  # best two: {a, b} vs {d, b}
    spread = seed_spread_vs_gaps({"a": [1.0, 1.2], "b": [2.0, 2.2], "c": [4.0, 4.2]})
    assert spread["seed_std_mean"] == pytest.approx(0.14142, abs=1e-4)
    assert spread["adjacent_gap_median"] == pytest.approx(1.5)
    d = paired_difference([1.0, 2.0, 3.0], [1.5, 2.4, 3.6])
    assert d["mean_diff"] == pytest.approx(-0.5) and d["ci95"][0] < -0.5 < d["ci95"][1] < 0
    assert d["excludes_zero"] is True
    assert best_so_far([None, 3.0, 4.0, None, 2.0, math.inf]) == [None, 3.0, 3.0, 3.0, 2.0, 2.0]


def test_cut_survival_keeps_the_best_third_as_successive_halving_does():
    rung = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 5.0, "e": 4.0, "f": 6.0, "g": 0.5}
    long = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0, "only_long": 0.0}
    cut = cut_survival(rung, long, reduction_factor=3)
    assert cut["n"] == 7 and cut["kept"] == 2 and cut["survivors"] == ["g", "b"]  # 7 // 3 = 2 kept
    assert cut["top3"] == {"k": 3, "survive": 1, "rate": pytest.approx(1 / 3, abs=1e-4)}  # a, b, c: b
    assert cut["top5"]["survive"] == 1 and cut["top5"]["k"] == 5
    assert cut_survival({"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 1.0})["survivors"] == ["a"]  # at least one
    assert cut_survival(rung, long, 2)["kept"] == 3
    with pytest.raises(ValueError, match="reduction factor"):
        cut_survival(rung, long, 1)


def test_rung_statistics_rank_and_cut_each_step_of_the_curves():
    long = [1.0 + 0.1 * i for i in range(7)]  # c0 best at the long budget
    seed0 = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    seed1 = [0.0, 4.5, 2.0, 3.0, 1.0, 5.0, 6.0]
    table = [{"label": f"c{i}", "learns": True, "mean": {"40": long[i]},
              "curves": {"20": [[[5, 9.0 - i], [10, seed0[i]]], [[5, 9.0 - i], [10, seed1[i]]]]}}
             for i in range(7)]
    table[6]["curves"]["20"][1] = [[5, 3.0]]  # diverged on seed 1 before step 10
    table.append({"label": "x", "learns": False, "mean": {"40": None},  # best at every step, learns nothing
                  "curves": {"20": [[[5, 0.0], [10, -1.0]], [[5, 0.0], [10, -1.0]]]}})
    stats = fidelity.rung_statistics(table, [20], 40, resamples=50, reduction_factor=3)["20"]
    assert sorted(stats) == ["10", "5"]
    early = stats["5"]  # ranks the cells in reverse
    assert early["cells"] == 7 and early["missing"] == 0 and early["spearman"] == -1.0
    assert early["cut"]["survivors"] == ["c6", "c5"] and early["cut"]["top5"]["survive"] == 0
    assert early["top5"]["overlap"] == 3  # c2, c3, c4 are in both top-5s
    late = stats["10"]  # c6 has no value on seed 1: 6 cells, 2 kept
    assert late["cells"] == 6 and late["missing"] == 1 and late["cut"]["kept"] == 2
    assert late["cut"]["survivors"] == ["c0", "c2"]  # seed means 0, 2.75, 2, 3, 2.5, 5
    assert late["cut"]["top3"]["survive"] == 2
    # one seed at a time: seed 0 keeps c0, c1 (2 of the top 3), seed 1 keeps c0, c4 (1 of them)
    assert late["cut_per_seed"] == {"top3": 1.5, "top5": 2.0}


def test_fidelity_retrains_only_the_runs_whose_curve_is_missing(tmp_path, monkeypatch):
    runs = [fidelity.Run(f"h{i}|b", f"c{i}", "{}", 0, 10, {}, None, None, curve=i < 2) for i in range(3)]
    cache = JsonlCache(tmp_path / "f.jsonl")
    old = {"key": "h0|b", "val_bpc": 2.0, "seconds": 1.0}  # cached before curves were kept
    cache.add(old)
    cache.add({"key": "h1|b", "val_bpc": 2.5, "seconds": 1.0, "curve": [[5, 3.0], [10, 2.5]]})
    cache.add({"key": "h2|b", "val_bpc": 3.0, "seconds": 1.0})  # wants no curve
    trained = []

    def fake_train(run, key):
        trained.append(key)
        return {"key": key, "val_bpc": 2.01, "seconds": 2.0, "curve": [[5, 3.5], [10, 2.01]]}

    monkeypatch.setattr(fidelity, "train", fake_train)
    assert fidelity.execute(runs, cache, workers=1) == 1 and trained == ["h0|b|curve"]
    assert cache.records["h0|b"] == old  # the numbers computed from the old record stay
    assert fidelity.curve_of(runs[0], cache) == [[5, 3.5], [10, 2.01]]
    assert fidelity.curve_of(runs[1], cache) == [[5, 3.0], [10, 2.5]]
    reruns = fidelity.curve_reruns(runs, JsonlCache(tmp_path / "f.jsonl"))  # as read back from the file
    assert reruns == {"runs": 1, "train_seconds": 2.0, "val_bpc_max_abs_diff": 0.01, "diverged_differently": 0}
    assert fidelity.execute(runs, cache, workers=1) == 0


def test_jsonl_cache_survives_a_torn_last_line(tmp_path):
    cache = JsonlCache(tmp_path / "c.jsonl")
    cache.add({"key": "a", "v": 1})
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"key": "b", "v"')  # killed mid-write
    again = JsonlCache(tmp_path / "c.jsonl")
    assert "a" in again and "b" not in again
    with pytest.raises(ValueError, match="'key'"):
        again.add({"v": 2})


# ---- fidelity ----------------------------------------------------------------------------------------

def test_fidelity_tiny_run_and_resume(tmp_path, corpus):
    out = tmp_path / "fid.json"
    argv = ["--cells", "1", "--short-steps", "2", "--budgets", "1", "--long-factor", "2",
            "--resamples", "100", "--learn-below", "100", "--out", str(out), *corpus, *TINY]
    first = fidelity.main([*argv, "--seeds", "1"])
    assert first["runs"] == {**first["runs"], "total": 6 * 3, "ran_now": 18, "from_cache": 0}
    result = fidelity.main([*argv, "--seeds", "2"])  # only the second seed's runs are new
    assert result["runs"] == {**result["runs"], "total": 6 * 2 * 3, "ran_now": 18, "from_cache": 18}
    assert json.loads(out.read_text()) == result
    assert out.with_suffix(".png").stat().st_size > 0
    cells = result["cells"]
    assert result["short_budgets"] == [1, 2] and result["long_steps"] == 4
    assert len(cells) == result["cells_total"] == 1 + len(fidelity.REFERENCES)
    assert len({c["cell_hash"] for c in cells}) == len(cells)
    sampling = result["sampling"]
    assert sampling["screen"]
    assert sampling["drawn"] == 1 + sampling["invalid"] + sampling["duplicates"] + sampling["screened"]
    for c in cells:
        assert all(len(c["val_bpc"][b]) == 2 for b in ("1", "2", "4"))
        assert c["learns"] == (c["mean"]["4"] is not None)  # threshold 100: every finished cell learns
    learners = sum(c["learns"] for c in cells)
    assert result["cells_learning"] == learners >= 3
    for b in ("1", "2"):
        s = result["budgets"][b]
        assert s["cells"] + s["short_diverged"] == learners and s["n"] == s["cells"]
        for name in ("spearman", "kendall"):
            low, high = s[f"{name}_ci95"]
            assert -1 <= low <= high <= 1 and -1 <= s[name] <= 1
        assert s["top5"]["overlap"] <= s["top5"]["k"] == min(5, s["cells"])
        assert s["seed_spread"]["seed_std_mean"] >= 0
        assert s["cut"]["n"] == s["cells"] and s["cut"]["kept"] == max(1, s["cells"] // 3)
    rungs = result["rungs"]  # curves of the search's budget (2 steps), evaluated every 2 steps
    assert rungs["curve_budgets"] == [2] and rungs["eval_every"] == 2 and rungs["reduction_factor"] == 3
    assert sorted(rungs["by_budget"]["2"]) == ["2"]
    assert all(len(c["curves"]["2"]) == 2 and "1" not in c["curves"] for c in cells)
    at2 = rungs["by_budget"]["2"]["2"]
    assert at2["cells"] + at2["missing"] == learners and at2["cut"]["n"] == at2["cells"]
    assert result["runs"]["curve_reruns"]["runs"] == 0
    assert result["machine"]["versions"]["torch"] and result["wall_s"] > 0

    again = fidelity.main([*argv, "--seeds", "2"])
    assert again["runs"]["ran_now"] == 0 and again["cells"] == cells


def test_fidelity_rejects_a_short_budget_not_below_the_long_one(tmp_path, corpus):
    with pytest.raises(ValueError, match="below the long one"):
        fidelity.main(["--short-steps", "3", "--budgets", "6", "--long-factor", "2", "--cells", "1",
                       "--out", str(tmp_path / "f.json"), *corpus, *TINY])
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--budgets", "1,x"])


# ---- controllers ---------------------------------------------------------------------------------------

def test_controllers_tiny_run_and_resume(tmp_path, corpus):
    out = tmp_path / "ctl.json"
    argv = ["--controllers", "random,evolution", "--trials", "3", "--seeds", "2", "--trainer", "tiny",
            "--override", "trainer.steps=3", "--out", str(out), *corpus, *TINY]
    result = controllers.main(argv)
    assert json.loads(out.read_text()) == result
    assert out.with_suffix(".png").stat().st_size > 0
    assert result["run"]["studies"] == result["run"]["ran_now"] == 4
    assert not out.with_suffix(".studies").exists()  # finished studies leave no journal behind
    for study in result["studies"]:
        assert len(study["trials"]) == len(study["best_so_far"]) == 3
        assert study["reference_seeding"] is False
        curve = [v for v in study["best_so_far"] if v is not None]
        assert curve and curve == sorted(curve, reverse=True) and all(0 < v < 10 for v in curve)
    summary = result["summary"]
    assert set(summary) == {"random", "evolution"} and "vs_random" not in summary["random"]
    end = summary["evolution"]["vs_random"]["3"]
    assert end["n"] == 2 and end["ci95"][0] <= end["mean_diff"] <= end["ci95"][1]
    assert summary["random"]["best_at"]["3"]["seeds"] == 2

    again = controllers.main(argv)
    assert again["run"]["ran_now"] == 0 and again["studies"] == result["studies"]


def test_controllers_reference_seeding_starts_every_controller_from_the_reference_cells(tmp_path, corpus):
    argv = ["--controllers", "random,evolution", "--trials", "2", "--seeds", "1", "--trainer", "tiny",
            "--override", "trainer.steps=2", "--reference-seeding", "--out", str(tmp_path / "c.json"),
            *corpus, *TINY]
    result = controllers.main(argv)
    for study in result["studies"]:
        assert study["reference_seeding"] is True
        assert [t["reference"] for t in study["trials"]] == ["rnn_tanh", "lstm"], study["controller"]
        assert study["best_new_so_far"] == [None, None]
    with pytest.raises(SystemExit):
        controllers.parse_args(["--controllers", "random,nsga2"])


def test_controllers_resume_an_interrupted_study_from_its_journal(tmp_path, corpus):
    out = tmp_path / "ctl.json"
    argv = ["--controllers", "random", "--trials", "2", "--seeds", "1", "--trainer", "tiny",
            "--override", "trainer.steps=2", "--out", str(out), *corpus, *TINY]
    args = controllers.parse_args(argv)
    job = controllers.plan(args, out.with_suffix(".studies"))[0]
    first = controllers.run_study(controllers.StudyJob(job.key, job.controller, job.seed,
                                                       {**job.cfg, "n_trials": 1}, False))  # then killed
    result = controllers.main(argv)
    trials = result["studies"][0]["trials"]
    # trials that trained a cell (screened cells and duplicates are replaced, not counted)
    assert result["run"]["ran_now"] == 1 and len(trials) == 2 and trials[0]["number"] < trials[1]["number"]
    assert trials[0] == first["trials"][0]  # the first study's trial was not run again


def test_the_overview_picture_draws_the_best_new_cell_and_the_comparison(tmp_path):
    from benchmarks import overview
    from nas.cell import known_cell

    with pytest.raises(SystemExit, match="no final comparison"):
        overview.draw(tmp_path, tmp_path / "o.png")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "comparison.csv").write_text(
        "label,role,cell_hash,test_bpc_mean,test_bpc_std,n_seeds,diverged,val_bpc_mean,params,chars_per_sec,trial\n"
        "gru,baseline,c2-x,2.40,0.01,5,0,2.2,99450,1,\n"
        "trial 7 (new),trial,c2-y,2.45,0.02,5,0,2.3,100266,1,7\n"
        "trial 3 (new),trial,c2-z,,,5,5,,100266,1,3\n")  # diverged on every seed: no score
    (tmp_path / "trials" / "00007").mkdir(parents=True)
    (tmp_path / "trials" / "00007" / "cell.json").write_text(known_cell("mut1").to_json())
    assert [r["label"] for r in overview.read_comparison(tmp_path)] == ["gru", "trial 7 (new)"]
    out = overview.draw(tmp_path, tmp_path / "pics" / "o.png")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


# ---- wall-time bounds (the timings that tests/cell and tests/tracking no longer assert) ----------------

def test_cell_limits_times_each_input_with_its_outcome():
    from benchmarks import cell_limits

    results = cell_limits.measure()
    assert len(results) == 8
    for name, r in results.items():
        assert r["outcome"] == ("refused" if name.startswith("refuse") else "accepted"), name
        assert r["seconds"] >= 0 and isinstance(r["within_bound"], bool)


def test_tracking_overhead_times_an_unreachable_store():
    from benchmarks import tracking_overhead

    assert tracking_overhead.calls(f"http://127.0.0.1:{tracking_overhead.free_port()}") > 0
