"""`nas-search`: search cells on one Optuna study, then compare the best with the baselines.

    nas-search
    nas-search search_space=highway controller=reinforce n_trials=200 workers=4 trainer.steps=2000
    nas-search storage.url=postgresql://user:pw@host/db study=big-run   # other machines: nas-worker
"""

from __future__ import annotations

from omegaconf import OmegaConf

from nas.cli import hydra_cli
from nas.config import SearchApp


def run(cfg: SearchApp) -> None:
    from nas.search.run import format_table, search

    plain = OmegaConf.to_container(cfg, resolve=True)
    outcome = search(plain)
    print(format_table(outcome))
    comparison = outcome.extra.get("comparison")
    if comparison is not None:
        print("\nFinal comparison (retrained, test split, mean +- std over seeds):")
        print(comparison.markdown())
    if plain["export"]["enabled"]:
        print(f"\nbest cell exported to {export_best(plain)}")
    if plain["tracking"]["enabled"]:
        uri = f" --uri {plain['tracking']['uri']}" if plain["tracking"]["uri"] else ""
        print(f"inspect the runs in MLflow: nas-dashboard{uri}   (then open http://127.0.0.1:5000)")


def export_best(cfg: dict) -> str:
    """Export the study's best trial to <export.dir>/<study>-best (replacing an earlier export)."""
    import re
    from pathlib import Path

    from nas.export import export_cell
    from nas.search.results import ResultError, export_bundle
    from nas.search.study import join_study

    study, _ = join_study(cfg["study"], cfg["storage"]["url"], cfg["out_dir"])
    try:
        found = export_bundle(study)
    except ResultError as e:
        return f"nowhere: {e}"
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{cfg['study']}_best").strip("_").lower()
    folder = export_cell(found["spec"], Path(cfg["export"]["dir"]) / name, name=name,
                         weights=found["weights"], metrics=found["metrics"], origin=found["origin"],
                         overwrite=True)
    return str(folder)


main = hydra_cli("nas-search", "search", SearchApp, run)


if __name__ == "__main__":
    main()
