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
from omegaconf import OmegaConf

from nas.cli import check_trainer, hydra_cli, load_cell
from nas.config import TrainApp, check_int


def check(app: TrainApp) -> None:
    """Every setting, before the run folder is created: the cell, the seed, the trainer, the corpus."""
    check_int("seed", app.seed, 0)
    app.trainer.check()  # torch-free checks first: a typo is answered at once
    app.data.check()
    load_cell(app.cell)
    check_trainer(app.trainer, app.data)


def train(cfg: TrainApp) -> None:
    from nas.config import TrainConfig
    from nas.data import load_corpus
    from nas.train import evaluate

    spec = load_cell(cfg.cell)
    trainer = TrainConfig(**OmegaConf.to_container(cfg.trainer))
    corpus = load_corpus(cfg.data.path, cfg.data.cache_dir, cfg.data.format)
    out = HydraConfig.get().runtime.output_dir
    result = evaluate(spec, trainer, cfg.seed, corpus, out_dir=out, desc=spec.name or cfg.cell)
    shown = {k: getattr(result, k) for k in ("cell_hash", "params", "hidden_size", "steps", "tokens",
                                             "seconds", "chars_per_sec", "train_bpc", "val_bpc",
                                             "test_bpc", "divergence")}
    print(json.dumps(shown, indent=2))
    print(f"run saved in {out}")
    if cfg.tracking.enabled:
        track(cfg, spec.name or Path(cfg.cell).stem, result, trainer, corpus, out)


def track(cfg: TrainApp, label: str, result, trainer, corpus, out: str) -> None:
    """The run in MLflow (experiment tracking.experiment, default nas/train); never fails the command."""
    from nas.search.objective import budget_key
    from nas.tracking import Tracker

    t = cfg.tracking
    tracker = Tracker(t.uri, t.experiment, t.retries, t.timeout)
    budget = budget_key(trainer, cfg.seed, corpus.source_hash)
    plain = {"seed": cfg.seed, "trainer": OmegaConf.to_container(cfg.trainer)}
    run_id = tracker.log_train(label, {**result.to_dict(), "run_dir": str(out), "budget": budget}, plain)
    if run_id is not None:
        print(f"MLflow run {run_id} in experiment {t.experiment or 'nas/train'} (nas-dashboard shows it)")


main = hydra_cli("nas-train", "train", TrainApp, train, check)


if __name__ == "__main__":
    main()
