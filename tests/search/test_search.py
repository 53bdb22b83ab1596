"""Searches on a tiny budget: the helpers other test files share (config, TINY, small_corpus, counted),
and what a search's trials record (resuming with other settings, invalid cells and duplicates, the
cell as equations, metric names, evolution's first cells). The pipeline end to end is in
test_pipeline.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.trial import TrialState

from nas.cli import CONF_DIR
from nas.config import SearchApp, search_app
from nas.search.objective import equations
from nas.search.results import trial_cell
from nas.search.run import search
from nas.search.storage import counts_toward_budget
from nas.search.study import StudyError, join_study, open_study
from nas.search.summary import format_table

TINY = ["trainer=tiny", "trainer.steps=6", "trainer.eval_every=3", "trainer.eval_chars=500",
        "trainer.sample_chars=0", "pruner=none", "tracking.enabled=false", "report.enabled=false",
        "workers=1", "export.enabled=false"]


def small_corpus(tmp_path):
    """A 60k-character slice of the default corpus: the final full-split evaluations stay cheap."""
    from nas.data import default_corpus_path

    path = tmp_path / "small.txt"
    if not path.exists():
        path.write_text(default_corpus_path().read_text()[:60_000])
    return path


def config(tmp_path, *overrides) -> SearchApp:
    """The tiny search config (what nas-search composes, typed as the pipeline takes it)."""
    import nas.cli.search  # noqa: F401 - registers the schema

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("search", overrides=[*TINY, f"out_dir={tmp_path / 'study'}",
                                           f"data.path={small_corpus(tmp_path)}",
                                           f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    return search_app(OmegaConf.to_container(cfg, resolve=True))


def counted(study):
    return [t for t in study.get_trials(deepcopy=False) if counts_toward_budget(t)]


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = config(tmp_path, "n_trials=1", "baselines=[]", "study=fixed", "search_space=highway")
    open_study(cfg, multi_objective=False)
    other = replace(cfg, trainer=replace(cfg.trainer, steps=7))
    with pytest.raises(StudyError, match="trainer.steps: 6 -> 7"):
        open_study(other, multi_objective=False)


def test_invalid_cells_fail_with_their_reason_and_duplicates_are_reused(tmp_path):
    cfg = config(tmp_path, "n_trials=12", "baselines=[]", "study=g", "search_space=graph",
                 "search_space.options.min_nodes=2", "search_space.options.max_nodes=5", "controller=random")
    outcome = search(cfg, progress=False)
    study, _ = join_study("g", None, cfg.out_dir)
    for t in study.get_trials():
        state = t.user_attrs.get("nas_state")
        assert state in ("complete", "duplicate", "invalid", "diverged", "screened"), (t.number, state)
        if t.state == TrialState.FAIL:
            assert t.user_attrs["reason"]
        if state == "duplicate":
            first = study.trials[t.user_attrs["duplicate_of"]]
            assert first.user_attrs["cell_hash"] == t.user_attrs["cell_hash"]
            assert first.values == t.values
        if "cell_json" in t.user_attrs:  # what optuna-dashboard shows of each trial's cell
            assert t.user_attrs["cell"] == t.user_attrs.get("reference", "new")
            assert t.user_attrs["equations"] == equations(trial_cell(t))
    assert "new" in {t.user_attrs.get("cell") for t in study.trials}
    assert "val bpc" in format_table(outcome)


def test_the_cell_reads_as_equations():
    from nas.cell import known_cell

    assert equations(known_cell("gru")) == [
        "r_lin = linear(x, h)", "z_lin = linear(x, h)", "r = sigmoid(r_lin)", "z = sigmoid(z_lin)",
        "xn = linear(x)", "hn = linear(h)", "rhn = mul(r, hn)", "n_pre = add(xn, rhn)", "n = tanh(n_pre)",
        "h_new = blend(z, h, n)", "h' = h_new"]
    assert "f_lin = linear(x, h, bias_init=1.0)" in equations(known_cell("lstm"))  # options unlike the default


@pytest.mark.parametrize("controller, names", [("random", ["val_bpc"]), ("nsga2", ["val_bpc", "params"])])
def test_the_study_names_its_metrics(tmp_path, controller, names):
    """optuna-dashboard labels the objectives by these names (not "Objective 0")."""
    cfg = config(tmp_path, f"controller={controller}", "study=m")
    assert open_study(cfg, multi_objective=len(names) == 2).metric_names == names


def test_evolution_starts_from_the_reference_cells_of_the_space(tmp_path):
    """Trials come from the budget's placeholders (top_up): evolution must still seed them."""
    from nas.cell import known_cell
    from nas.search_spaces import get_space

    cfg = config(tmp_path, "n_trials=3", "baselines=[]", "study=evo", "search_space=graph",
                 "controller=evolution")
    search(cfg, progress=False)
    study, _ = join_study("evo", None, cfg.out_dir)
    names = list(get_space("graph", **cfg.search_space.options).known)[:3]
    assert [t.system_attrs.get("evolution:seed") for t in study.trials] == [0, 1, 2]
    assert [t.user_attrs["cell_hash"] for t in study.trials] == [known_cell(n).canonical_hash() for n in names]
    assert [t.user_attrs["cell"] for t in study.trials] == names
    assert [t.user_attrs["cell_label"] for t in study.trials] == [f"trial {i} = {n}" for i, n in enumerate(names)]
    assert study.metric_names == ["val_bpc"]


