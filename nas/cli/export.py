"""`nas-export`: a searched cell as a standalone PyTorch module, with its spec, picture, model card
and, when the training run is on this machine, its trained weights and the whole trained character
model (embedding, cell, decoder, vocabulary) with sample.py and evaluate.py.

    nas-export study=graph-tpe            # best trial
    nas-export study=graph-tpe trial=12
    nas-export run_id=0a1b2c...           # an MLflow run of a trial
    nas-export cell=runs/train/<run>      # a nas-train run folder (or its cell.json): the trained model
    nas-export cell=my_cell.json          # a cell alone: no trained model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.cli import check_study_exists, check_writable, hydra_cli, load_cell
from nas.config import ExportApp


def check(app: ExportApp) -> None:
    """The settings, the cell file and the study (whichever is given), before any folder is created."""
    from nas.config_checks import check_export_app

    check_export_app(app)
    if app.dest:
        check_writable(app.dest)
    if app.cell:
        cell_and_run(app.cell)
    elif app.study and not app.run_id:
        check_study_exists(app.study, app.storage.url, app.study_dir or Path("runs") / "search" / app.study)


def resolve(cfg: ExportApp) -> dict[str, Any]:
    from nas.export.lm import find_trained_lm, trial_lm
    from nas.search.results import export_bundle

    if cfg.cell:
        spec, run = cell_and_run(cfg.cell)
        if run is None:
            return {"spec": spec, "weights": None, "metrics": None, "origin": {"source": cfg.cell},
                    "name": spec.name or Path(cfg.cell).stem,
                    "lm": f"cell={cfg.cell} names a cell, not a training run (a nas-train run folder is one)"}
        lm = find_trained_lm(run, cell_hash=spec.canonical_hash())
        result = getattr(lm, "result", {})
        metrics = {k: result[k] for k in ("val_bpc", "test_bpc", "params", "hidden_size") if result.get(k)}
        return {"spec": spec, "weights": None, "metrics": metrics, "origin": {"run folder": str(run)},
                "name": spec.name or "cell", "lm": lm}
    if cfg.run_id:
        from nas.tracking import trial_of_run

        study_name, number = trial_of_run(cfg.tracking, cfg.run_id)
        study = _study(cfg, study_name)
        found = export_bundle(study, number, None)
    elif not cfg.study:
        raise ValueError("say what to export: study=NAME (best trial; or trial=N / cell_hash=...), "
                         "run_id=MLFLOW_RUN_ID, cell=FILE.json or cell=RUN_FOLDER")
    else:
        study = _study(cfg, cfg.study)
        found = export_bundle(study, _best_reference(study) if cfg.trial is None and not cfg.cell_hash
                              else cfg.trial, cfg.cell_hash)
    return {**found, "lm": trial_lm(study, found["origin"]["trial"])}


def _best_reference(study) -> int | None:
    """None (export the best new cell) unless the study has scored only reference cells (a short
    search seeded with them): then its best trial, said on the terminal, since a user asking for a
    study's best cell expects a folder, and the card names the reference cell it is."""
    from nas.search.results import label, new_cells, scored_trials

    scored = scored_trials(study)
    if not scored or new_cells(scored):
        return None
    print(f"note: study {study.study_name!r} has completed no new cell yet; exporting its best trial, "
          f"{label(scored[0])}, a reference cell")
    return scored[0].number


def cell_and_run(ref: str):
    """(the cell, the training run folder or None) of `cell=`: a run folder (nas-train's, a search
    trial's, a final retraining's: it holds cell.json), a cell.json inside one, or any cell reference."""
    path = Path(ref)
    if path.is_dir():
        if not (path / "cell.json").is_file():
            raise FileNotFoundError(f"cell={ref}: a folder, but not a training run folder (no cell.json in it)")
        return load_cell(str(path / "cell.json")), path
    run = path.parent if path.name == "cell.json" and (path.parent / "weights.pt").is_file() else None
    return load_cell(ref), run


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
                         origin=found["origin"], overwrite=cfg.overwrite, lm=found["lm"])
    print(f"exported {found['spec'].canonical_hash()} to {folder}")
    lm = found["lm"]
    if isinstance(lm, str):
        weights = " and its trained recurrent weights" if (folder / "weights.pt").is_file() else ""
        print(f"  NO trained model included: {lm}. The folder holds the cell module{weights} only.")
    else:
        score = lm.result.get("val_bpc")
        score = f"{score:.4f}" if isinstance(score, float) else "not scored"
        print(f"  with the trained model (val bpc {score}): python {folder / 'sample.py'}  |  "
              f"python {folder / 'evaluate.py'} TEXT_FILE  (see {folder / 'README.md'})")
    print(f"  {folder / 'README.md'} states the plain-torch speed against torch.nn.LSTM; "
          "nas.compile.CellRNN is the fast path")


main = hydra_cli("nas-export", "export", ExportApp, run, check)


if __name__ == "__main__":
    main()
