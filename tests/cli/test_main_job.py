"""The README's main job (`nas-search` with its defaults) through the real CLI at a tiny budget, and
every output a newcomer is promised: the study, the MLflow runs, the comparison table, the export."""

from __future__ import annotations

import re
import shutil
import subprocess

import optuna
from optuna.trial import TrialState

from nas.data import default_corpus_path

BASELINES = ["lstm", "gru", "mut1", "mut2", "mut3"]


def test_default_main_job_end_to_end(tmp_path):
    exe = shutil.which("nas-search")
    assert exe, "nas-search is not installed"
    (tmp_path / "small.txt").write_text(default_corpus_path().read_text()[:60_000])
    # the defaults (graph space, evolution, 2 workers, 5 baselines, report, MLflow, export), but a
    # budget of seconds and a small corpus
    tiny = ["trainer=tiny", "trainer.steps=6", "trainer.eval_every=3", "trainer.eval_chars=500",
            "trainer.sample_chars=20", "n_trials=10", "report.seeds=2", "report.top_k=2", "report.steps=null",
            "data.path=small.txt"]
    p = subprocess.run([exe, *tiny], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout

    # the study: a journal file under runs/search/<study>/ with exactly the requested trials
    journal = tmp_path / "runs" / "search" / "graph-evolution" / "journal.log"
    assert journal.exists()
    study = optuna.load_study(study_name="graph-evolution", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    from nas.search.storage import counts_toward_budget

    # n_trials counts cells trained: duplicates and screened cells are replaced, not counted
    assert sum(counts_toward_budget(t) for t in study.trials) == 10
    assert all(t.state.is_finished() for t in study.trials)
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    workers = {t.system_attrs["nas:worker"] for t in study.trials}
    assert len(workers) == 2  # the default runs two worker processes

    # the comparison table: test bpc mean +- std over the seeds, for every baseline
    assert "test bpc (mean ± std)" in out
    for name in BASELINES:
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert re.search(r"\d\.\d{4} ± \d\.\d{4} \| 2 \|", row), row

    # progress when not on a terminal: a line per trial, per baseline and per final training, also
    # in the job log under runs/
    trial_lines = re.findall(r"(?m)(?:^|\s)trial (\d+)(?: = \w+| \(new\))?: \w+, (.*)$", p.stderr)
    assert sorted(int(n) for n, _ in trial_lines) == sorted(t.number for t in study.trials), p.stderr[-3000:]
    assert re.search(r"; best so far \d\.\d{4} \(trial \d+", trial_lines[-1][1]), trial_lines[-1]
    assert set(re.findall(r"baselines: baseline (\w+) seed 0: val bpc \d", p.stderr)) == set(BASELINES)
    finals = re.findall(r"final comparison: (.+) seed (\d): val bpc \d\.\d{4}, test bpc", p.stderr)
    names = {name for name, _ in finals}
    assert sorted(finals) == sorted((name, seed) for name in names for seed in "01"), finals  # each once
    assert set(BASELINES) < names and all(re.fullmatch(r"trial \d+ \(new\)", n) for n in names - set(BASELINES))
    job_logs = [f.read_text() for f in (tmp_path / "runs").rglob("*.log") if f.name != "journal.log"]
    assert any("final comparison: lstm seed 1: " in text for text in job_logs), job_logs

    # the MLflow store under runs/: the search run, trials and baselines side by side (no parent to
    # expand), one run per compared cell with its seed runs nested under it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nas/graph-evolution")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    roles = {}
    for r in runs:
        roles.setdefault(r.data.tags.get("role"), []).append(r)
    assert len(roles["search"]) == 1 and len(roles["trial"]) == len(study.trials)
    assert {r.data.tags["cell"] for r in roles["baseline"]} >= set(BASELINES)
    assert len(roles["final"]) >= 2 * len(BASELINES)
    compared = {r.info.run_id: r for r in roles["comparison"]}
    assert {r.info.run_name for r in compared.values()} == {f"final {name}" for name in names}
    assert all(r.data.tags.get("mlflow.parentRunId") in compared for r in roles["final"])
    assert not any(r.data.tags.get("mlflow.parentRunId") for r in roles["trial"] + roles["baseline"])
    parent = roles["search"][0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/comparison.md", "report/comparison.csv"} <= artifacts

    # reference cells are named wherever they appear; the table and the export hold new cells only
    references = {t.user_attrs.get("reference") for t in study.trials} - {None}
    assert references, "evolution starts from the reference cells of the space"
    for r in roles["trial"]:
        ref = r.data.tags.get("reference")
        assert r.info.run_name == f"trial {r.data.tags['trial']}" + (f" = {ref}" if ref else " (new)")
    final_cells = {line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if "| trial |" in line}
    assert final_cells and all(c.endswith("(new)") for c in final_cells), final_cells
    assert re.search(r"^- (lstm|gru|mut\d): (beaten by|no new cell beats it)", out, re.MULTILINE), out[-3000:]

    # the exported best cell (a new one), and the printed pointers
    match = re.search(r"best new cell \(trial \d+ \(new\)\) exported to (\S+)", out)
    assert match, out[-2000:]
    folder = tmp_path / match.group(1)
    assert "reference cell: none (a new cell)" in (folder / "README.md").read_text()
    for name in ("cell.json", "README.md", "cell.png"):
        assert (folder / name).exists(), name
    assert list(folder.glob("*.py")) and (folder / "weights.pt").exists()
    assert "nas-dashboard" in out
