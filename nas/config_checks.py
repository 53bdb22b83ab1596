"""Checks of the settings above the trainer's (search, worker, report, export): one-line ValueErrors
naming the setting, what was expected and what came, raised before any work starts or any file is
created. Torch-free; they read attributes only, so they work on the dataclasses of nas.config and on
OmegaConf nodes alike. Registries that need heavy imports (search spaces, controllers, cells) are
checked by their callers (nas.search.api.check_search, the CLIs).
"""

from __future__ import annotations

import math
import re
from typing import Any

from nas.config import ExportApp, PrunerConfig, ReportConfig, SearchApp, WorkerApp

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
PRUNERS = ("none", "median", "halving", "hyperband")


def check_int(key: str, value: Any, low: int, optional: bool = False) -> None:
    """`value` is an integer >= `low` (or None when `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}: expected an integer >= {low}{' or None' if optional else ''}, got {value!r}")


def check_name(key: str, value: Any) -> None:
    """A study (or export) name becomes a folder under runs/: a plain name, never a path."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ValueError(f"{key}: expected a plain name (letters, digits, '.', '_', '-'; first a letter "
                         f"or digit; at most 100 characters), got {value!r}")


def check_device(key: str, value: Any, threads: Any = None) -> None:
    """`device` is auto, cpu, mps, cuda or cuda:N; `threads` None or >= 1."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(f"{key}: expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
    check_int("threads", threads, 1, optional=True)


def check_pruner(cfg: PrunerConfig) -> None:
    if cfg.name not in PRUNERS:
        raise ValueError(f"pruner.name: expected one of {', '.join(PRUNERS)}, got {cfg.name!r}")
    check_int("pruner.n_startup_trials", cfg.n_startup_trials, 0)
    check_int("pruner.n_warmup_steps", cfg.n_warmup_steps, 0)
    check_int("pruner.min_resource", cfg.min_resource, 1, optional=True)
    check_int("pruner.reduction_factor", cfg.reduction_factor, 2)


def check_report(cfg: ReportConfig) -> None:
    check_int("report.top_k", cfg.top_k, 1)
    check_int("report.seeds", cfg.seeds, 1)
    if cfg.steps is not None:
        check_int("report.steps", cfg.steps, 1)


def check_baselines(names: Any, cells: Any) -> None:
    """Each baseline is a reference cell name of `cells` (nas.cell.KNOWN_CELLS), at most once."""
    for name in names or ():
        if name not in cells:
            raise ValueError(f"baselines: expected reference cell names ({', '.join(cells)}), got {name!r}")
    if len(set(names or ())) != len(names or ()):
        raise ValueError(f"baselines: each cell at most once, got {list(names)}")


def check_search_app(cfg: SearchApp) -> None:
    """The search-level settings of `nas-search`, all but the baselines' names (check_baselines:
    nas.cell's names cost a torch import) and the trainer's and corpus's (TrainConfig, DataConfig)."""
    check_name("study", cfg.study)
    check_int("n_trials", cfg.n_trials, 0)
    check_int("workers", cfg.workers, 0)
    check_int("workers_per_device", cfg.workers_per_device, 1, optional=True)
    check_int("seed", cfg.seed, 0)
    check_device("device", cfg.device, cfg.threads)
    for key, value in (("search_space.name", cfg.search_space.name), ("controller.name", cfg.controller.name)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key}: expected a name, got {value!r}")
    check_pruner(cfg.pruner)
    check_report(cfg.report)
    check_int("tracking.retries", cfg.tracking.retries, 0)
    if not (isinstance(cfg.tracking.timeout, (int, float)) and math.isfinite(cfg.tracking.timeout)
            and cfg.tracking.timeout > 0):
        raise ValueError(f"tracking.timeout: expected a number of seconds > 0, got {cfg.tracking.timeout!r}")


def check_worker_app(cfg: WorkerApp) -> None:
    check_name("study", cfg.study)
    check_device("device", cfg.device, cfg.threads)
    check_int("replica", cfg.replica, 0)
    check_int("workers_per_device", cfg.workers_per_device, 1, optional=True)


def check_export_app(cfg: ExportApp) -> None:
    if cfg.study is not None:
        check_name("study", cfg.study)
    check_int("trial", cfg.trial, 0, optional=True)
    if cfg.name is not None and not (isinstance(cfg.name, str) and cfg.name.isidentifier()):
        raise ValueError(f"name: expected a Python identifier (the module's name), got {cfg.name!r}")
