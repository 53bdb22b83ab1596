"""`nas-search`: search cells on one Optuna study, then compare the best with the baselines.

    nas-search
    nas-search search_space=highway controller=reinforce n_trials=200 workers=4 trainer.steps=2000
    nas-search storage.url=postgresql://user:pw@host/db study=big-run   # other machines: nas-worker
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from nas.cli import CONF_DIR, check_overrides, run_task
from nas.config import SearchApp

ConfigStore.instance().store(name="search_schema", node=SearchApp)


def run(cfg: SearchApp) -> None:
    from nas.search.run import format_table, search

    plain = OmegaConf.to_container(cfg, resolve=True)
    outcome = search(plain)
    print(format_table(outcome))


@hydra.main(config_path=CONF_DIR, config_name="search", version_base="1.3")
def _main(cfg: SearchApp) -> None:
    run_task("nas-search", lambda: run(cfg))


def main() -> None:
    check_overrides("nas-search", "search", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
