"""Creating, resuming and joining a study; the pruner; the search settings stored with the study.

The resolved search config is stored in the study (user attr `nas:config`) when it is created, so a
worker that joins from another machine needs only the study name and the storage URL, and a rerun
of the same command resumes it. Settings that change what a score means (space, controller, trainer,
data, seed) cannot change on resume: that would mix incomparable trials in one study.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna

from nas.search.storage import StudyError, check_storage, make_storage, top_up

CONFIG_ATTR = "nas:config"
METRIC_NAMES = ["val_bpc", "params"]  # what the objective returns (params: multi-objective only)
# Settings that may differ between runs of one study (budget, parallelism, where and how it runs).
_FREE = {"n_trials", "workers", "workers_per_device", "device", "threads", "storage", "pruner", "out_dir",
         "baselines", "top_k", "tracking", "report", "export"}
_FREE_TRAINER = {"device", "threads", "progress", "tf32", "bf16", "eval_batch_size"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_pruner(cfg: dict[str, Any], eval_every: int, steps: int) -> optuna.pruners.BasePruner:
    name = cfg["name"]
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg["n_startup_trials"],
                                           n_warmup_steps=cfg["n_warmup_steps"])
    min_resource = cfg.get("min_resource") or eval_every
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                      reduction_factor=cfg["reduction_factor"])
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=steps,
                                              reduction_factor=cfg["reduction_factor"])
    raise StudyError(f"pruner.name must be none, median, halving or hyperband, got {name!r}")


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in _FREE and k != "study"}
    out["trainer"] = {k: v for k, v in cfg["trainer"].items() if k not in _FREE_TRAINER}
    return out


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            diffs += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            diffs.append(f"{prefix}{key}: {x!r} -> {y!r}")
    return diffs


def open_study(cfg: dict[str, Any], multi_objective: bool) -> optuna.Study:
    """Create the study (or resume it), check its settings, and top up its trial budget.

    Called once by the launcher before any worker starts: creating a study from several processes at
    once races in Optuna's RDB storages. An unwritable folder or a full disk is a StudyError."""
    check_storage(cfg["storage"])
    try:
        return _open_study(cfg, multi_objective)
    except OSError as e:
        where = "the study's storage" if cfg["storage"]["url"] else str(Path(cfg["out_dir"]) / "journal.log")
        raise StudyError(f"cannot write {where}: {e.strerror or e}; make it writable (or free space) "
                         "or choose another out_dir=...") from None


def _open_study(cfg: dict[str, Any], multi_objective: bool) -> optuna.Study:
    storage = make_storage(cfg["storage"]["url"], Path(cfg["out_dir"]))
    directions = ["minimize", "minimize"] if multi_objective else ["minimize"]
    study = optuna.create_study(study_name=cfg["study"], storage=storage, directions=directions,
                                load_if_exists=True)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, cfg)
    else:
        diffs = _differences(_comparable(stored), _comparable(cfg))
        if diffs:
            raise StudyError(f"study {cfg['study']!r} exists with other settings ({'; '.join(diffs[:3])}); "
                             "resume it with its settings or choose another study name (study=...)")
    if len(study.directions) != len(directions):
        raise StudyError(f"study {cfg['study']!r} has {len(study.directions)} objective(s); "
                         f"controller {cfg['controller']['name']!r} needs {len(directions)}")
    name_metrics(study)
    top_up(study, cfg["n_trials"])
    return study


def name_metrics(study: optuna.Study) -> None:
    """Name the study's objectives (optuna-dashboard shows "val_bpc", not "Objective 0"): val_bpc, and
    params for the multi-objective controllers. Written once; studies of older versions get them on
    their next run."""
    names = METRIC_NAMES[:len(study.directions)]
    if study.metric_names != names:
        with warnings.catch_warnings():  # Study.set_metric_names is marked experimental (since 3.2)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def join_study(name: str, storage_url: str | None, out_dir: str) -> tuple[optuna.Study, dict[str, Any]]:
    """Load an existing study and its stored config (for nas-worker and the local workers)."""
    storage = make_storage(storage_url, Path(out_dir))
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        where = storage_url or str(Path(out_dir) / "journal.log")
        raise StudyError(f"no study named {name!r} in {where}: start it with nas-search first") from None
    cfg = study.user_attrs.get(CONFIG_ATTR)
    if cfg is None:
        raise StudyError(f"study {name!r} was not created by nas-search (it has no {CONFIG_ATTR!r})")
    return study, cfg
