"""`nas-train`: train one cell as a character-level language model and score it in bits/char.

    nas-train cell=lstm
    nas-train cell=path/to/cell.json data.path=corpus.txt trainer.steps=300 hydra.run.dir=runs/x

Writes result.json, cell.json, weights.pt and sample.txt into the run directory, and logs the run to
MLflow (the searches' store, experiment nas/train; off with tracking.enabled=false).
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from nas.cli import check_trainer, hydra_cli, load_cell
from nas.config import TrainApp
from nas.config_checks import check_int


def check(app: TrainApp) -> None:
    """Every setting, before the run folder is created: the cell, the seed, the trainer, the corpus."""
    check_int("seed", app.seed, 0)
    app.trainer.check()  # torch-free checks first: a typo is answered at once
    app.data.check()
    load_cell(app.cell)
    check_trainer(app.trainer, app.data)


def train(app: TrainApp) -> None:
    from nas.data import load_corpus
    from nas.train import evaluate

    spec = load_cell(app.cell)
    corpus = load_corpus(app.data.path, app.data.cache_dir, app.data.format)
    out = HydraConfig.get().runtime.output_dir
    result = evaluate(spec, app.trainer, app.seed, corpus, out_dir=out, desc=spec.name or app.cell)
    shown = {k: getattr(result, k) for k in ("cell_hash", "params", "hidden_size", "steps", "tokens",
                                             "seconds", "chars_per_sec", "train_bpc", "val_bpc",
                                             "test_bpc", "divergence")}
    print(json.dumps(shown, indent=2))
    print(f"run saved in {out}")
    if app.tracking.enabled:
        track(app, spec.name or Path(app.cell).stem, result, corpus, out)


def track(app: TrainApp, label: str, result, corpus, out: str) -> None:
    """The run in MLflow (experiment tracking.experiment, default nas/train); never fails the command."""
    from nas.search.objective import budget_key
    from nas.tracking import Tracker

    t = app.tracking
    tracker = Tracker(t.uri, t.experiment, t.retries, t.timeout)
    budget = budget_key(app.trainer, app.seed, corpus.source_hash)
    run_id = tracker.log_train(label, {**result.to_dict(), "run_dir": str(out), "budget": budget}, app)
    if run_id is not None:
        print(f"MLflow run {run_id} in experiment {t.experiment or 'nas/train'} (nas-dashboard shows it)")


main = hydra_cli("nas-train", "train", TrainApp, train, check)


if __name__ == "__main__":
    main()
