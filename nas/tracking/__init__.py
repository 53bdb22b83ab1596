"""Every MLflow call of the project: searches, trials, baselines, the final comparison and `nas-train`.

What a search looks like in MLflow (one experiment per study, "nas/<study>", marked as model training
so MLflow opens its runs view; docs/mlflow.md). Every run is top-level, so the runs table shows them
without expanding anything; the final comparison's seed runs are nested under their cell's run:

    final <cell>                  role=comparison, one per compared cell: mean test_bpc over the seeds,
    |                             test_bpc_std (so MLflow charts one bar per cell in one chart)
    +- final <cell> seed S        role=final: the cell retrained with seed S, its test_bpc
    search <study>                role=search: the search config as params; best_val_bpc per trial
                                  number; trial counts by state (tags); report/ (comparison table
                                  .md/.csv, plots .png); its description is the comparison table
    baseline lstm, gru, ...       role=baseline, once per budget (tags cell, budget)
    trial 5 = mut3, trial 7 (new) role=trial, named by cell_label; state=complete|pruned|failed|
                                  diverged|duplicate (and nas_state, the finer reason), reason;
                                  params: cell hash, space, controller, hidden size, parameter count,
                                  steps, tokens, budget, seed, trainer.*; metrics: curve/val_bpc and
                                  curve/train_bpc per step, final val_bpc, train_bpc, chars_per_sec,
                                  seconds (at step 0: a bar per run); artifacts: cell.json, cell.png,
                                  sample.txt, result.json

Scores have one name across runs (val_bpc, test_bpc) and constants are params, so MLflow's own charts
compare cells. The experiment also holds saved views of the runs table (experiment_url() opens them).
`nas-train` logs one run (role=train) to the experiment "nas/train" of the same store.

Failed, diverged and pruned trials are runs too: status FAILED (or KILLED when pruned) and a
`reason` tag. No method raises into the search; an unreachable store is warned about once and its
missing runs are logged later from the Optuna study.

The package, top to bottom (each module imports only those above it):
    server.py      the local store (default_store), `mlflow server` for nas-dashboard, relocate_artifacts
    views.py       the experiment's guide text, saved views of the runs table, experiment_url
    connection.py  the only MLflow import: one client per URI, retries, offline and back (TrackingWarning)
    records.py     trials and results as run records (no MLflow call)
    tracker.py     Tracker, which writes those records as runs; trial_of_run
"""

from nas.tracking.connection import TrackingWarning
from nas.tracking.server import QUIET_ENV, default_store, relocate_artifacts, server_command, server_env
from nas.tracking.tracker import PARENT_ATTR, Tracker, trial_of_run
from nas.tracking.views import experiment_url

__all__ = ["PARENT_ATTR", "QUIET_ENV", "Tracker", "TrackingWarning", "default_store", "experiment_url",
           "relocate_artifacts", "server_command", "server_env", "trial_of_run"]
