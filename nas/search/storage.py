"""The study's persistent storage and the trial budget shared by all workers.

Storage: by default an Optuna journal file, `runs/search/<study>/journal.log` (safe for several
processes on one machine, ~10x cheaper per trial than SQLite here); any Optuna RDB URL
(postgresql://, mysql://, sqlite:///) for workers on several machines.

Trial budget: `top_up` enqueues WAITING trials until the study holds `n_trials` trials that count
(finished, running or waiting; trials lost with a killed worker do not count), and workers only
ever *pop* waiting trials (an atomic WAITING -> RUNNING transition in every Optuna storage). So N
workers run exactly n_trials trials between them, and rerunning a command resumes the study until
its budget is met.

Killed workers: every running trial records its worker (`nas:worker` = host:pid) and a heartbeat
(`nas:heartbeat`, unix time, refreshed by a thread). `reap_lost` fails a RUNNING trial whose worker
process is gone (same host) or whose heartbeat is older than the grace period (any host), tags it
`nas_state = "lost"`, and enqueues a retry with the same parameters, so completed results are never
lost and a lost cell is evaluated again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Self

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("nas.search")

WORKER_ATTR, HEARTBEAT_ATTR = "nas:worker", "nas:heartbeat"
LOST = "lost"


def make_storage(url: str | None, study_dir: Path, heartbeat_interval: int = 30):
    """An Optuna storage: the journal file in `study_dir` when `url` is None, else the RDB `url`."""
    if url:
        if "://" not in url:
            raise ValueError(f"storage.url {url!r} is not a database URL (e.g. postgresql://user@host/db)")
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # noqa: BLE001 - driver/connection errors come in many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot open storage {_redact(url)}: {first}") from None
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    study_dir.mkdir(parents=True, exist_ok=True)
    path = str(study_dir / "journal.log")
    # The open-lock (O_EXCL lock file) works on every filesystem, symlinks do not on some mounts. A
    # writer holds it for milliseconds; one killed while holding it leaves the file behind, so take it
    # over after 5 s rather than Optuna's default 30 s (a killed worker must not stall the others).
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path, grace_period=5)))


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counts_toward_budget(t: FrozenTrial) -> bool:
    return not (t.state == TrialState.FAIL and t.user_attrs.get("nas_state") == LOST)


def top_up(study: optuna.Study, n_trials: int) -> int:
    """Enqueue WAITING trials until `n_trials` trials count; returns how many were added."""
    have = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
    missing = max(0, n_trials - have)
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def pop_trial(study: optuna.Study) -> optuna.Trial | None:
    """Claim one WAITING trial for this worker, or None when the budget is used up."""
    # Study._pop_waiting_trial_id is the atomic claim Study.ask() itself uses; ask() would create a
    # new trial when none is waiting, overrunning the budget.
    trial_id = study._pop_waiting_trial_id()
    if trial_id is None:
        return None
    # Heartbeat before owner: a reaper that sees the owner also sees a fresh beat.
    study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
    study._storage.set_trial_system_attr(trial_id, WORKER_ATTR, this_worker())
    return optuna.Trial(study, trial_id)


class Heartbeat:
    """Refresh the running trial's heartbeat every `interval` seconds from a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(study, trial_id, interval), daemon=True)

    def _beat(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat of trial %d failed: %s", trial_id, e)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_lost(t: FrozenTrial, grace_period: float, now: float) -> bool:
    worker = t.system_attrs.get(WORKER_ATTR)
    if worker is None:
        return False  # claimed by a process that is not a nas worker: leave it alone
    host, _, pid = str(worker).rpartition(":")
    same_host = host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid()
    if same_host and not _alive(int(pid)):
        return True
    beat = t.system_attrs.get(HEARTBEAT_ATTR)
    if beat is None:  # not yet written: fall back on when the trial started
        beat = t.datetime_start.timestamp() if t.datetime_start else now
    return now - float(beat) > grace_period


def reap_lost(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and enqueue their retries. Returns their numbers."""
    now, reaped = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_lost(t, grace_period, now):
            continue
        # Attributes first: a finished trial can no longer be annotated. If another reaper wins the
        # state change below, it wrote the same attributes and it alone enqueues the retry.
        try:
            study._storage.set_trial_user_attr(t._trial_id, "nas_state", LOST)
            study._storage.set_trial_user_attr(t._trial_id, "reason",
                                               f"worker {t.system_attrs.get(WORKER_ATTR)} stopped")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reaped it first
        retry_of = t.user_attrs.get("retry_of", t.number)
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": retry_of}, skip_if_exists=False)
        reaped.append(t.number)
        log.warning("trial %d lost with its worker %s: retrying it", t.number, t.system_attrs.get(WORKER_ATTR))
    return reaped
