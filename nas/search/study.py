"""Creating, resuming and joining a study; the pruner; the search settings stored with the study.

The resolved search config is stored in the study (user attr `nas:config`) when it is created, so a
worker that joins from another machine needs only the study name and the storage URL, and a rerun
of the same command resumes it. Settings that change what a score means (space, controller, trainer,
data, seed) cannot change on resume: that would mix incomparable trials in one study.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from nas import trials
from nas.config import SPEED_ONLY, PrunerConfig, SearchApp, plain, search_app
from nas.search.errors import StudyError
from nas.search.storage import check_storage, make_storage, top_up

METRIC_NAMES = ["val_bpc", "params"]  # what the objective returns (params: multi-objective only)
# Settings that may differ between runs of one study (budget, parallelism, where and how it runs).
_FREE = {"n_trials", "workers", "workers_per_device", "device", "threads", "storage", "pruner", "out_dir",
         "baselines", "tracking", "report", "export"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_pruner(pruner: PrunerConfig | Mapping[str, Any], eval_every: int,
                steps: int) -> optuna.pruners.BasePruner:
    """The pruner of `pruner` (a PrunerConfig, or its plain dict) for trials that evaluate every
    `eval_every` of `steps` steps."""
    p = pruner if isinstance(pruner, PrunerConfig) else PrunerConfig(**pruner)
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    min_resource = p.min_resource or eval_every
    if p.name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                      reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=steps,
                                              reduction_factor=p.reduction_factor)
    raise StudyError(f"pruner.name must be none, median, halving or hyperband, got {p.name!r}")


def _comparable(app: SearchApp) -> dict[str, Any]:
    """The settings that must not change on resume, as a plain dict (for messages naming each key)."""
    out = {k: v for k, v in plain(app).items() if k not in _FREE and k != "study"}
    out["trainer"] = {k: v for k, v in plain(app.trainer).items() if k not in SPEED_ONLY}
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


def open_study(cfg: SearchApp | Mapping[str, Any], multi_objective: bool) -> optuna.Study:
    """Create the study (or resume it), check its settings, and top up its trial budget. `cfg`: the
    search config (or its plain dict, as stored with a study).

    Called once by the launcher before any worker starts: creating a study from several processes at
    once races in Optuna's RDB storages. An unwritable folder or a full disk is a StudyError."""
    app = search_app(cfg)
    check_storage(app.storage)
    try:
        return _open_study(app, multi_objective)
    except OSError as e:
        where = "the study's storage" if app.storage.url else str(Path(app.out_dir) / "journal.log")
        raise StudyError(f"cannot write {where}: {e.strerror or e}; make it writable (or free space) "
                         "or choose another out_dir=...") from None


def _open_study(app: SearchApp, multi_objective: bool) -> optuna.Study:
    storage = make_storage(app.storage.url, Path(app.out_dir))
    directions = ["minimize", "minimize"] if multi_objective else ["minimize"]
    study = optuna.create_study(study_name=app.study, storage=storage, directions=directions,
                                load_if_exists=True)
    stored = trials.stored_config(study)
    if stored is None:
        trials.store_config(study, plain(app))
    else:
        # Through the typed config, so that a setting added since the study was made (stored without
        # it) compares at its default, and a setting since removed is no difference.
        diffs = _differences(_comparable(_typed(stored, app.study)), _comparable(app))
        if diffs:
            raise StudyError(f"study {app.study!r} exists with other settings ({'; '.join(diffs[:3])}); "
                             "resume it with its settings or choose another study name (study=...)")
    if len(study.directions) != len(directions):
        raise StudyError(f"study {app.study!r} has {len(study.directions)} objective(s); "
                         f"controller {app.controller.name!r} needs {len(directions)}")
    name_metrics(study)
    top_up(study, app.n_trials)
    return study


def _typed(stored: Mapping[str, Any], name: str) -> SearchApp:
    try:
        return search_app(stored)
    except Exception as e:  # noqa: BLE001 - OmegaConf's validation errors come in several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"study {name!r} holds settings this version cannot read ({first}); "
                         "choose another study name (study=...)") from None


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
    cfg = trials.stored_config(study)
    if cfg is None:
        raise StudyError(f"study {name!r} was not created by nas-search (it has no {trials.CONFIG_ATTR!r})")
    return study, cfg
