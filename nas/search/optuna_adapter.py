"""Every use of Optuna's private API, in one place (tested against the installed Optuna by
tests/search/test_optuna_adapter.py with in-memory, journal-file and SQLite storages).

Tested with Optuna 4.3, 4.4, 4.5 and 5.1 (pyproject.toml: optuna>=4.3,<6). When a new Optuna breaks
one of these, this file and its test are the whole fix.

Why each is needed (Optuna has no public equivalent):
    pop_waiting(study)                 the atomic WAITING -> RUNNING claim Study.ask() uses; ask() itself
                                       creates a trial when none waits, which would overrun the budget
    trial_id(trial)                    the storage's id of a trial (FrozenTrial._trial_id, Trial._trial_id)
    fetch(study, trial)                a trial's current state from the storage, bypassing the study's cache
    all_trials(study)                  the study's trials straight from the storage (also for the filtered
                                       study a sampler's before_trial gets)
    enqueued_params(trial)             the params a trial was enqueued with (Optuna's "fixed_params")
    set_system_attr(study, trial, k, v)  a system attr of a trial held as a FrozenTrial or an id (samplers
                                       and heartbeats annotate trials they do not run as optuna.Trial)
    user_attr_writer(study, trial)     the same for user attrs (nas.trials writes through it)
    fail(study, trial)                 set a RUNNING trial to FAIL; False when another process finished it
    uniform_draw(distribution, rng)    a draw as RandomSampler makes it (optuna's search-space transform)
    contains(distribution, value)      whether a value lies in a distribution
    journal_lock(lock)                 hold a journal file's lock (nas.search.journal appends under it)
    forget_read_positions(backend)     make a journal backend read its file again from the start
                                       (after nas.search.journal rewrote it)
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import optuna
from optuna._transform import _SearchSpaceTransform
from optuna.distributions import BaseDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.trial import FrozenTrial, TrialState

TrialRef = FrozenTrial | optuna.Trial | int   # a trial, or its storage id


def trial_id(trial: TrialRef) -> int:
    """The storage's id of a trial (not its number: ids are unique across the studies of a storage)."""
    return trial if isinstance(trial, int) else trial._trial_id


def pop_waiting(study: optuna.Study) -> int | None:
    """Claim one WAITING trial (now RUNNING) and return its id, or None when none waits."""
    return study._pop_waiting_trial_id()


def fetch(study: optuna.Study, trial: TrialRef) -> FrozenTrial:
    """The trial as the storage holds it now."""
    return study._storage.get_trial(trial_id(trial))


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """All the study's trials from its storage (not copied: do not modify them)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The params fixed by enqueue_trial for this trial ({} for an ordinary or an empty enqueued one)."""
    return trial.system_attrs.get("fixed_params") or {}


def set_system_attr(study: optuna.Study, trial: TrialRef, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial_id(trial), key, value)


class _UserAttrWriter:
    """Writes the user attrs of a trial through the storage (see nas.trials.AttrSink)."""

    def __init__(self, study: optuna.Study, trial: TrialRef) -> None:
        self._storage, self._id = study._storage, trial_id(trial)

    def set_user_attr(self, key: str, value: Any) -> None:
        self._storage.set_trial_user_attr(self._id, key, value)


def user_attr_writer(study: optuna.Study, trial: TrialRef) -> _UserAttrWriter:
    """Something with `set_user_attr(key, value)` for a trial this process does not run as optuna.Trial.
    Writing to a finished trial raises optuna.exceptions.UpdateFinishedTrialError."""
    return _UserAttrWriter(study, trial)


def fail(study: optuna.Study, trial: TrialRef) -> bool:
    """Set the RUNNING trial to FAIL. False when another process changed its state first; raises
    optuna.exceptions.UpdateFinishedTrialError when it is already finished."""
    return study._storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)


def uniform_draw(distribution: BaseDistribution, rng: np.random.Generator) -> Any:
    """A draw from `distribution` as RandomSampler makes it (uniform; log-uniform where log=True)."""
    transform = _SearchSpaceTransform({"x": distribution})
    return transform.untransform(rng.uniform(transform.bounds[:, 0], transform.bounds[:, 1]))["x"]


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether `value` (external representation) is one of the distribution's values."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def journal_lock(lock: Any) -> contextlib.AbstractContextManager:
    """A context that holds `lock` (a JournalFileOpenLock or JournalFileSymlinkLock), as Optuna's
    journal file backend holds it around its own appends."""
    return get_lock_file(lock)


def forget_read_positions(backend: JournalFileBackend) -> None:
    """Drop the backend's memory of where each log number starts in its file, so the next read
    starts over (the file was rewritten under it)."""
    backend._log_number_offset = {0: 0}
