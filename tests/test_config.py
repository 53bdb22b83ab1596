"""nas.config: the typed config of a search from its plain form (the JSON stored with a study)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nas.cli import CONF_DIR
from nas.config import SearchApp, TrainConfig, plain, search_app


def composed(*overrides: str) -> dict:
    import nas.cli.search  # noqa: F401 - registers the schema

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("search", overrides=list(overrides)), resolve=True)


def test_the_stored_config_round_trips():
    stored = composed("controller=evolution", "trainer.steps=7", "baselines=[lstm]")
    app = search_app(stored)
    assert isinstance(app, SearchApp) and isinstance(app.trainer, TrainConfig)
    assert app.trainer.steps == 7 and app.baselines == ["lstm"] and app.study == "graph-evolution"
    assert plain(app) == stored  # the same JSON goes back into the study
    assert search_app(app) is app


def test_an_old_study_config_loads():
    """Settings a study of an older version lacks get their defaults; keys since removed are dropped."""
    old = composed()
    del old["trainer"]["state_span"], old["workers_per_device"]
    old["top_k"] = 5
    old["trainer"]["gone"] = 1
    app = search_app(old)
    assert app.trainer.state_span == TrainConfig().state_span and app.workers_per_device is None
    assert "top_k" not in plain(app) and "gone" not in plain(app)["trainer"]
