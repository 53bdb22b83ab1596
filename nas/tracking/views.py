"""How a study looks in MLflow's UI: the experiment's kind and guide text, its saved views of the runs
table, and links that open them. No MLflow call."""

from __future__ import annotations

import json

# Saved views of the runs table, stored in the experiment as MLflow's own shared views are (the UI's
# "Share" button writes the same tags). "nas": every run, the scores as columns, every run in the
# charts (the UI default charts the first 10 only). "nas-compare": the final comparison, one run per
# cell, and its test_bpc chart. Opened by experiment_url(); MLflow 3.17 chooses between its GenAI and
# model-training views per browser, so the link also asks for the model-training one.
VIEWS = {
    "nas": {"selectedColumns": ["metrics.`test_bpc`", "metrics.`val_bpc`", "params.`param_count`",
                                "params.`hidden_size`", "tags.`state`", "tags.`reason`"],
            "runsHiddenMode": "SHOW_ALL"},
    "nas-compare": {"searchFilter": "tags.role = 'comparison'", "runsHiddenMode": "SHOW_ALL",
                    "selectedColumns": ["metrics.`test_bpc`", "metrics.`test_bpc_std`", "params.`param_count`",
                                        "tags.`n_seeds`"],
                    "chartsSearchFilter": "test_bpc", "hideEmptyCharts": True},
}


def experiment_url(base: str, experiment_id: str, view: str = "nas", charts: bool = False) -> str:
    """The MLflow UI's page of an experiment logged here (`base`: the server, http://127.0.0.1:5000), in
    the model-training view with one of the project's saved views ("nas": every run; "nas-compare":
    the final comparison), as the runs table or (`charts`) the chart view."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{url}&viewStateShareKey={view}" + ("&compareRunsMode=CHART" if charts else "")


# MLflow 3 opens an experiment in its GenAI (traces) view unless the experiment says it is model
# training: the UI reads this tag (values of its ExperimentKind: custom_model_development, ...).
EXPERIMENT_KIND = "custom_model_development"
GUIDE = ("**How to read this experiment.** One run per trial (`trial 5 = mut3`: the search found a "
         "reference cell; `trial 7 (new)`: a new cell), per baseline (`baseline lstm`), and per cell of the "
         "final comparison (`final <cell>`: mean `test_bpc` over the seeds, its seeds nested under it). "
         "Chart view: `test_bpc` compares the final cells, `val_bpc` the trials and baselines at the search "
         "budget, `curve/val_bpc` shows their learning curves. The search run holds the comparison table "
         "and plots (artifacts, report/).")
TRAIN_GUIDE = ("One run per `nas-train` command (`train <cell> seed <seed>`): `val_bpc`, `train_bpc` and "
               "`test_bpc` (with trainer.test=true) are the final scores, `curve/val_bpc` the learning curve; "
               "the cell's JSON and picture, a text sample and result.json are its artifacts.")
EXPERIMENT_TAGS = {"mlflow.experimentKind": EXPERIMENT_KIND, "mlflow.note.content": GUIDE,
                   **{f"mlflow.sharedViewState.{k}": json.dumps(v) for k, v in VIEWS.items()}}
