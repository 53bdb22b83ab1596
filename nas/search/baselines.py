"""The baselines of a search: each reference cell of `baselines` trained once per budget (same
trainer, data and seed as the trials), its result kept in the study, so that a rerun or a second
search at the same budget reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from nas import trials
from nas.config import SearchApp
from nas.search.objective import budget_key
from nas.search.results import scored_trials
from nas.search.retrain import TrainJob, run_jobs, scores
from nas.trials import TrialRecord

log = logging.getLogger("nas.search")


def run_baselines(study: optuna.Study, app: SearchApp, tracker=None,
                  progress: bool = False) -> dict[str, dict[str, Any]]:
    """Train each baseline cell once per budget, in parallel over `workers` processes; its result (an
    EvalResult dict) by name. A baseline that a trial already trained is that trial's result."""
    from nas.cell import known_cell
    from nas.data import load_corpus

    corpus = load_corpus(app.data.path, app.data.cache_dir, app.data.format)
    key = budget_key(app.trainer, app.seed, corpus.source_hash)
    todo = [name for name in app.baselines if trials.baseline(study, name, key) is None]
    reused = {name: "trained by an earlier run of this study" for name in app.baselines if name not in todo}
    for name, data in baselines_from_trials(study, todo, key, app.seed).items():
        trials.store_baseline(study, name, key, data)
        todo.remove(name)
        reused[name] = f"trained as trial {data['from_trial']}"
    if not progress:
        for name, source in reused.items():
            log.info("baselines: baseline %s seed %d: %s (%s)", name, app.seed,
                     scores(trials.baseline(study, name, key)), source)
    jobs = [TrainJob(f"baseline {name}", known_cell(name).to_json(indent=None), app, app.seed,
                     str((Path(app.out_dir) / "baselines" / f"{name}-{key}").resolve()), key, test=False)
            for name in todo]
    for name, data in zip(todo, run_jobs(jobs, app.workers, progress, "baselines")):
        trials.store_baseline(study, name, key, data)
    out = {}
    for name in app.baselines:
        out[name] = trials.baseline(study, name, key)
        if tracker is not None:
            tracker.log_baseline(study, name, out[name], app)  # once per budget: it skips logged ones
    return out


def baselines_from_trials(study: optuna.Study, names: list[str], budget: str,
                          seed: int) -> dict[str, dict[str, Any]]:
    """Baselines that a trial already trained (a search seeded with the reference cells trains them
    as trials, with the same trainer, data, seed and budget): their results, not a second training."""
    from nas.cell import known_cell

    wanted = {known_cell(name).canonical_hash(): name for name in names}
    found: dict[str, dict[str, Any]] = {}
    for t in scored_trials(study):
        r = TrialRecord.of(t)
        name = wanted.get(r.cell_hash)
        if name is None or name in found or r.budget != budget:
            continue
        found[name] = {**{k: getattr(r, k) for k in ("params", "hidden_size", "steps", "tokens", "seconds",
                                                     "chars_per_sec", "train_bpc", "divergence", "run_dir")},
                       "val_bpc": t.values[0], "cell_hash": r.cell_hash, "cell_name": name, "test_bpc": None,
                       "seed": seed, "curve": [list(p) for p in r.curve or ()],
                       "train_curve": [list(p) for p in r.train_curve or ()], "budget": budget,
                       "from_trial": t.number}
    return found
