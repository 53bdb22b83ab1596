"""`nas-train`: train one cell as a character-level language model and score it in bits/char.

    nas-train cell=lstm
    nas-train cell=path/to/cell.json data.path=corpus.txt trainer.steps=300 hydra.run.dir=runs/x

Writes result.json, cell.json, weights.pt and sample.txt into the run directory.
"""

from __future__ import annotations

import json

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
                                             "test_bpc", "diverged")}
    print(json.dumps(shown, indent=2))
    print(f"run saved in {out}")


main = hydra_cli("nas-train", "train", TrainApp, train, check)


if __name__ == "__main__":
    main()
