"""`nas-search`: search cells on one Optuna study, then compare the best with the baselines.

    nas-search
    nas-search search_space=highway controller=reinforce n_trials=200 workers=4 trainer.steps=2000
    nas-search storage.url=postgresql://user:pw@host/db study=big-run   # other machines: nas-worker
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from nas.cli import Failure, check_trainer, check_writable, hide_password, hydra_cli
from nas.config import SearchApp


def check(app: SearchApp) -> None:
    """Every setting, before the study or any folder is created: the search-level ones, the
    trainer's and the corpus's, the search space and its options, the controller and its options."""
    from nas.config import check_baselines, check_search_app

    check_search_app(app)  # torch-free checks first: a typo is answered at once
    app.trainer.check()
    app.data.check()
    check_storage(app.storage)

    from nas.cell import KNOWN_CELLS
    from nas.search.api import seed_params
    from nas.search.controllers import make_sampler
    from nas.search_spaces import open_space

    check_baselines(app.baselines, KNOWN_CELLS)
    check_trainer(app.trainer, app.data)
    space = open_space(app.search_space)
    options = dict(app.controller.options)
    if app.seed_cells:
        options["seed_params"] = seed_params(app, space)  # every file read, every cell expressible
    elif app.controller.name == "evolution" and "seed_params" not in options:
        options["seed_params"] = list(space.known.values())  # as the search will
    make_sampler(app.controller.name, seed=app.seed, **options)
    # Folders written only at the end of a search: a read-only one must fail now, not hours later.
    if app.export.enabled:
        check_writable(app.export.dir)
    if app.tracking.enabled and not app.tracking.uri:
        check_writable(Path("runs") / "mlflow")


def check_storage(storage) -> None:
    """The storage settings, by the storage module's own rules."""
    from nas.search.storage import check_storage as check

    check(storage)


def run(cfg: SearchApp) -> None:
    from nas.search.run import format_table, search
    from nas.search.worker import WorkerFailed

    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["seed_cells"]:  # stored with the study as params: no worker needs the files
        from nas.search.api import seed_params
        from nas.search_spaces import open_space

        app = OmegaConf.to_object(cfg)
        plain["controller"]["options"]["seed_params"] = seed_params(app, open_space(app.search_space))
    try:
        outcome = search(plain)
    except WorkerFailed as e:  # a local worker died: the work failed, the settings were fine
        raise Failure(str(e)) from e
    print(format_table(outcome))
    comparison = outcome.extra.get("comparison")
    if comparison is not None:
        print("\nFinal comparison (retrained, test split, mean +- std over seeds):")
        print(comparison.markdown())
    if plain["export"]["enabled"]:
        best = comparison.best() if comparison is not None else None
        print(f"\n{export_best(plain, best.trial if best is not None else None)}")
    if plain["tracking"]["enabled"]:
        uri = plain["tracking"]["uri"]
        uri = f" --uri {hide_password(uri, uri)}" if uri else ""
        print(f"inspect the runs in MLflow: nas-dashboard{uri}   (it prints the links to each study's runs "
              "and comparison)")


def export_best(cfg: dict, number: int | None = None) -> str:
    """Export the study's best new cell to <export.dir>/<study>-best (replacing an earlier export): trial
    `number` (the final comparison's best new cell, retrained with seeds), else the best new cell at
    the search budget. The line that says where, or why nothing was exported."""
    import re

    from nas.export import export_cell
    from nas.export.lm import trial_lm
    from nas.search.results import ResultError, export_bundle
    from nas.search.study import join_study

    study, _ = join_study(cfg["study"], cfg["storage"]["url"], cfg["out_dir"])
    try:
        found = export_bundle(study, number)
    except ResultError as e:
        return f"no cell exported: {e}"
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{cfg['study']}_best").strip("_").lower()
    folder = export_cell(found["spec"], Path(cfg["export"]["dir"]) / name, name=name,
                         weights=found["weights"], metrics=found["metrics"], origin=found["origin"],
                         lm=trial_lm(study, found["origin"]["trial"]), overwrite=True)
    return f"best new cell ({found['label']}) exported to {folder}"


main = hydra_cli("nas-search", "search", SearchApp, run, check)


if __name__ == "__main__":
    main()
