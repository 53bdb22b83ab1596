"""`nas-export`: a searched cell as a standalone PyTorch module, with its spec, picture, model card
and trained weights (when the trial's weights are on this machine).

    nas-export study=graph-tpe            # best trial
    nas-export study=graph-tpe trial=12
    nas-export run_id=0a1b2c...           # an MLflow run of a trial
    nas-export cell=my_cell.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.cli import check_study_exists, check_writable, hydra_cli, load_cell
from nas.config import ExportApp
from nas.search.results import export_bundle


def check(app: ExportApp) -> None:
    """The settings, the cell file and the study (whichever is given), before any folder is created."""
    from nas.config import check_export_app

    check_export_app(app)
    if app.dest:
        check_writable(app.dest)
    if app.cell:
        load_cell(app.cell)
    elif app.study and not app.run_id:
        check_study_exists(app.study, app.storage.url, app.study_dir or Path("runs") / "search" / app.study)


def resolve(cfg: ExportApp) -> dict[str, Any]:
    if cfg.cell:
        spec = load_cell(cfg.cell)
        return {"spec": spec, "weights": None, "metrics": None, "origin": {"source": cfg.cell},
                "name": spec.name or Path(cfg.cell).stem}
    if cfg.run_id:
        from nas.tracking import trial_of_run

        study_name, number = trial_of_run(cfg.tracking, cfg.run_id)
        return export_bundle(_study(cfg, study_name), number, None)
    if not cfg.study:
        raise ValueError("say what to export: study=NAME (best trial; or trial=N / cell_hash=...), "
                         "run_id=MLFLOW_RUN_ID, or cell=FILE.json")
    return export_bundle(_study(cfg, cfg.study), cfg.trial, cfg.cell_hash)


def _study(cfg: ExportApp, name: str):
    from nas.search.study import join_study

    study_dir = cfg.study_dir or str(Path("runs") / "search" / name)
    study, _ = join_study(name, cfg.storage.url, study_dir)
    return study


def run(cfg: ExportApp) -> None:
    import re

    from nas.export import export_cell

    found = resolve(cfg)
    name = cfg.name or re.sub(r"[^A-Za-z0-9_]+", "_", found["name"]).strip("_").lower() or "cell"
    dest = Path(cfg.dest) if cfg.dest else Path("runs/exports") / name
    folder = export_cell(found["spec"], dest, name=name, weights=found["weights"], metrics=found["metrics"],
                         origin=found["origin"], overwrite=cfg.overwrite)
    weights = "with trained weights" if found["weights"] is not None else "without weights"
    print(f"exported {found['spec'].canonical_hash()} ({weights}) to {folder}")


main = hydra_cli("nas-export", "export", ExportApp, run, check)


if __name__ == "__main__":
    main()
