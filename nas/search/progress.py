"""How a running search shows its progress: a bar on a terminal, else one log line per finished trial
(number and cell, state, val bpc or reason, best so far), each trial announced once per process.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search.results import best_so_far, label, trial_line
from nas.search.storage import counts_toward_budget

log = logging.getLogger("nas.search")

# What this process has announced: (study, trial number), and each study's best announced trial, so
# that "best so far" means the best of the lines above it.
_announced: set[tuple[str, int]] = set()
_best: dict[str, FrozenTrial] = {}


def progress_bar(study: optuna.Study, n_trials: int, show: bool):
    """The search's progress bar; None when not shown (then each trial is announced in a line)."""
    if not show:
        _resumed(study)
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=n_trials, desc=f"search {study.study_name}", unit="trial", dynamic_ncols=True)
    tick(bar, study)
    return bar


def tick(bar, study: optuna.Study) -> None:
    """Progress: the bar on a terminal; otherwise one log line per newly finished trial."""
    trials = study.get_trials(deepcopy=False)
    if bar is None:
        _announce(study.study_name, trials)
        return
    done = sum(t.state.is_finished() and counts_toward_budget(t) for t in trials)
    bar.update(done - bar.n)
    best = [t.values[0] for t in trials if t.state == TrialState.COMPLETE]
    if best:
        bar.set_postfix(best_bpc=f"{min(best):.4f}")


def _resumed(study: optuna.Study) -> None:
    """A resumed study: one line for the trials finished before this run, instead of one each."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and (study.study_name, t.number) not in _announced]
    if done:
        _announce_quietly(study.study_name, done)
        best = _best.get(study.study_name)
        so_far = f"; best so far {best.values[0]:.4f} ({label(best)})" if best is not None else ""
        log.info("study %s: %d trials finished before this run%s", study.study_name, len(done), so_far)


def _announce(study_name: str, trials) -> None:
    """Log each finished trial once: number and cell, state, val bpc or reason, best so far."""
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.is_finished() and (study_name, t.number) not in _announced:
            _announce_quietly(study_name, [t])
            log.info(trial_line(t, _best.get(study_name)))


def _announce_quietly(study_name: str, trials) -> None:
    _announced.update((study_name, t.number) for t in trials)
    best = best_so_far([*trials, *([_best[study_name]] if study_name in _best else [])])
    if best is not None:
        _best[study_name] = best
