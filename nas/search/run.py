"""The search pipeline: one call runs a whole search, in this order.

    search(app) -> SearchOutcome          (nas-search, nas.search.api.run_search)
    compare(study, app) -> Comparison     (nas-report: the final comparison of an existing study)

1. open (or resume) the study: its config is stored with it, so remote workers need only its name;
2. run its trials (nas.search.launch: in this process, in `workers` worker processes, or by
   nas-worker processes elsewhere);
3. train the baselines at the same budget (nas.search.baselines) and summarise the search
   (nas.search.summary: the table at the search budget);
4. the final comparison (nas.search.report: top cells and baselines retrained with seeds, on the
   test split), when report.enabled;
5. export the best new cell (nas.export), when export.enabled.
Every stage is logged to MLflow through one Tracker (nas.tracking), when tracking.enabled.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from nas import trials
from nas.config import SearchApp, search_app
from nas.search.baselines import run_baselines
from nas.search.launch import run_study
from nas.search.report import Comparison, final_comparison
from nas.search.results import ResultError, export_bundle
from nas.search.study import open_study
from nas.search.summary import SearchOutcome, summarise
from nas.search.worker import local_workers
from nas.tracking import Tracker

__all__ = ["compare", "export_best", "search", "seed_params", "with_seed_params"]


def search(app: SearchApp | Mapping[str, Any], progress: bool | None = None) -> SearchOutcome:
    """Run (or resume) the search `app` describes (a SearchApp, or its plain form) from its study to
    its export; `progress`: bars (None: when stderr is a terminal), else one log line per step."""
    from nas.provenance import versions
    from nas.search.samplers import is_multi_objective

    start = time.perf_counter()
    app = with_seed_params(search_app(app))
    study = open_study(app, is_multi_objective(app.controller.name))
    trials.store_versions(study, versions())  # the code of the latest run on this study
    app = replace(app, workers=local_workers(app.workers, app.workers_per_device, app.device))
    tracker = Tracker.from_config(app)
    tracker.start_search(study, app)  # before the workers: they attach their runs to its parent run
    show = sys.stderr.isatty() if progress is None else progress
    run_study(study, app, show)
    baselines = run_baselines(study, app, tracker, progress=show)
    outcome = summarise(study, app, baselines, time.perf_counter() - start)
    if app.report.enabled:
        comparison = final_comparison(study, app, tracker, progress=show)
        tracker.log_comparison(study, comparison)
        outcome = replace(outcome, comparison=comparison)
    tracker.end_search(study, outcome)
    if app.export.enabled:
        best = outcome.comparison.best() if outcome.comparison is not None else None
        outcome = replace(outcome, exported=export_best(study, app, best.trial if best is not None else None))
    return outcome


def compare(study: optuna.Study, app: SearchApp, progress: bool = False) -> Comparison:
    """The final comparison of an existing study (nas-report), logged to the study's MLflow parent run."""
    tracker = Tracker.from_config(app)
    tracker.start_search(study, app)
    comparison = final_comparison(study, app, tracker, progress=progress)
    tracker.log_comparison(study, comparison)
    tracker.end_search(study)
    return comparison


def with_seed_params(app: SearchApp) -> SearchApp:
    """`app` with its seed_cells resolved into the evolution controller's seed_params (stored with the
    study as params: no worker needs the files); `app` itself when there are none or already are."""
    if not app.seed_cells or "seed_params" in app.controller.options:
        return app
    from nas.search_spaces import open_space

    options = {**app.controller.options, "seed_params": seed_params(app, open_space(app.search_space))}
    return replace(app, controller=replace(app.controller, options=options))


def seed_params(app: SearchApp, space: Any) -> list[dict[str, Any]]:
    """The evolution controller's first cells: `space`'s reference cells, then `app.seed_cells`
    (cell JSON or NAS-Bench-NLP recipe files, or reference cell names), as the space's params.
    Resolved once, before the study is made, and stored with it: no worker needs the files."""
    from nas.cell.known import load_cell

    if app.controller.name != "evolution":
        raise ValueError(f"seed_cells: only the evolution controller starts from given cells, "
                         f"not {app.controller.name!r}")
    if "seed_params" in app.controller.options:
        raise ValueError("seed_cells: give either seed_cells or controller.options.seed_params")
    cells = {}
    for ref in app.seed_cells:
        try:
            cells[ref] = load_cell(ref)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"seed_cells: {e}") from None
    return space.seed_params(cells)


def export_best(study: optuna.Study, app: SearchApp, number: int | None = None) -> str:
    """Export the study's best new cell to <export.dir>/<study>_best (replacing an earlier export): trial
    `number` (the final comparison's best new cell, retrained with seeds), else the best new cell at
    the search budget. The line that says where, or why nothing was exported."""
    from nas.export import export_cell
    from nas.export.lm import trial_lm

    try:
        found = export_bundle(study, number)
    except ResultError as e:
        return f"no cell exported: {e}"
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"{app.study}_best").strip("_").lower()
    folder = export_cell(found["spec"], Path(app.export.dir) / name, name=name,
                         weights=found["weights"], metrics=found["metrics"], origin=found["origin"],
                         lm=trial_lm(study, found["origin"]["trial"]), overwrite=True)
    return f"best new cell ({found['label']}) exported to {folder}"
