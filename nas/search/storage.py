"""The study's persistent storage and the trial budget shared by all workers.

Storage: by default an Optuna journal file, `runs/search/<study>/journal.log` (safe for several
processes on one machine, ~10x cheaper per trial than SQLite here); any Optuna RDB URL
(postgresql://, mysql://, sqlite:///) for workers on several machines.

Partial writes: a journal record is one line, appended under the journal's lock. A writer that dies
mid-write (or a full disk) leaves a cut-off last line, onto which the next append would be glued,
making the whole study unreadable. So every append first moves such a tail aside (to
`journal.log.partial-<time>-<pid>`, with a warning), and an append that fails takes its own partial
bytes back; opening the storage does the same, and also splits a line damaged that way by older
versions. A damaged line that is not such a glued record is an error naming the file: never silently
dropped, since every later record may depend on it.

Trial budget: `top_up` enqueues WAITING trials until the study holds `n_trials` trials that count
(finished, running or waiting; trials lost with a killed worker do not count), and workers only
ever *pop* waiting trials (an atomic WAITING -> RUNNING transition in every Optuna storage). So N
workers run exactly n_trials trials between them, and rerunning a command resumes the study until
its budget is met.

Killed workers: every running trial records its worker (`nas:worker` = host:pid, and the process's
start time `nas:worker_started`, as pids are reused) and a heartbeat (`nas:heartbeat`, refreshed by
a thread every heartbeat_interval s). `reap_lost` fails a RUNNING trial whose worker is gone, tags
it `nas_state = "lost"` and enqueues a retry with the same parameters, so completed results are
never lost and a lost cell is evaluated again. Gone means:
 - same host: the worker process no longer exists. A live process's trial is never taken from it,
   however late its heartbeat (a long garbage collection or a slow disk is not a death). Hosts are
   told apart by name: containers that share a hostname must share their pid namespace too.
 - another host: its heartbeat has not changed for grace_period seconds *of this reaper's own
   clock*. The beat's value is only compared with earlier values of itself, never with this host's
   time, so clock skew between hosts cannot make a live worker look dead; the cost is that a
   reaper must watch a trial for grace_period seconds before it can reap it (the waiting launcher,
   `workers=0`, polls all along; a worker reaps between its trials).
`check_storage` rejects settings where a beat could be late by design (grace < 2 beats + margin).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger("nas.search")

WORKER_ATTR, HEARTBEAT_ATTR, STARTED_ATTR = "nas:worker", "nas:heartbeat", "nas:worker_started"
LOST = "lost"
# Seconds a grace period must exceed two heartbeat intervals by: one journal write may wait up to
# the 5 s lock takeover below, and a beat is written between two waits.
GRACE_MARGIN = 10
_RECORD = b'{"op_code":'  # how every Optuna journal record starts (json.dumps of its log dict)


class StudyError(ValueError):
    """The study cannot be created, found, opened or resumed as asked (one-line message)."""


def check_storage(storage: Mapping[str, Any] | Any) -> None:
    """Raise StudyError unless heartbeat_interval >= 1 and grace_period >= 2 * heartbeat_interval +
    GRACE_MARGIN, both whole seconds. `storage`: the `storage` config section (mapping or object)."""
    def get(key: str) -> Any:
        return storage[key] if isinstance(storage, Mapping) else getattr(storage, key)

    beat, grace = get("heartbeat_interval"), get("grace_period")
    for key, value in (("heartbeat_interval", beat), ("grace_period", grace)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value != int(value):
            raise StudyError(f"storage.{key} must be a whole number of seconds, got {value!r}")
    if beat < 1:
        raise StudyError(f"storage.heartbeat_interval must be >= 1 s, got {beat}")
    if grace < 2 * beat + GRACE_MARGIN:
        raise StudyError(f"storage.grace_period must be >= 2 x heartbeat_interval + {GRACE_MARGIN} = "
                         f"{2 * beat + GRACE_MARGIN} s (a live worker's beat may come that late), got {grace}")


def make_storage(url: str | None, study_dir: Path):
    """An Optuna storage: the journal file in `study_dir` when `url` is None, else the RDB `url`.

    The journal is repaired on opening (see the module docstring); an unwritable folder or a damaged
    journal raises StudyError."""
    if url:
        if "://" not in url:
            raise ValueError(f"storage.url {url!r} is not a database URL (e.g. postgresql://user@host/db)")
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # noqa: BLE001 - driver/connection errors come in many types
            # Optuna wraps the driver's error ("An exception is raised during the commit..."): the
            # innermost cause says what happened (e.g. "remaining connection slots are reserved").
            seen = {id(e)}
            while (e.__cause__ or e.__context__) is not None and id(e.__cause__ or e.__context__) not in seen:
                e = e.__cause__ or e.__context__
                seen.add(id(e))
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot open storage {_redact(url)}: {_redact(first)}") from None
    from optuna.storages.journal import JournalStorage

    path = study_dir / "journal.log"
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        backend = SafeJournalBackend(str(path))
    except OSError as e:
        raise StudyError(f"cannot create the study journal {path}: {e.strerror or e}; make the folder "
                         "writable or choose another out_dir=...") from None
    if backend.needs_repair():
        backend.repair()
    try:
        return JournalStorage(backend)
    except ValueError:  # a damaged line inside: Optuna's own message names no file
        backend.repair()
        return JournalStorage(SafeJournalBackend(str(path)))


class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file, never left with a partial last line (see the module docstring).

    Locking: Optuna's O_EXCL lock file (works on every filesystem; symlinks do not on some mounts).
    A writer holds it for milliseconds; one killed while holding it leaves the file behind, so it is
    taken over after 5 s rather than Optuna's default 30 s (a killed worker must not stall the others)."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path, lock_obj=JournalFileOpenLock(file_path, grace_period=5))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        from optuna.storages.journal._file import get_lock_file

        data = ("\n".join(json.dumps(r, separators=(",", ":")) for r in logs) + "\n").encode()
        with get_lock_file(self._lock):
            self._cut_tail()
            size = os.path.getsize(self._file_path)
            try:
                with open(self._file_path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                _truncate_quietly(self._file_path, size)  # take our partial record back
                raise

    def needs_repair(self) -> bool:
        """Whether the file ends in a cut-off line or its last line is not a record (cheap: reads
        the end only). Without the lock, so a tail may be another writer's append in progress:
        `repair` checks again under the lock."""
        with open(self._file_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            end = f.read()
        if not end or not end.endswith(b"\n"):
            return bool(end)
        lines = end[:-1].rsplit(b"\n", 1)
        if len(lines) == 1 and size > len(end):
            return False  # a last line longer than 1 MiB: Optuna's own read checks it
        return _parse(lines[-1]) is None

    def repair(self) -> None:
        """Under the lock: move cut-off or glued partial records aside, keep every complete record.
        Raises StudyError for a damaged line that is not a partial write; on a read-only folder,
        warns and leaves the file as it is (Optuna reads it without the partial tail)."""
        from optuna.storages.journal._file import get_lock_file

        try:
            with get_lock_file(self._lock):
                self._cut_tail()
                self._split_glued()
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StudyError(f"cannot repair the study journal {self._file_path}: {e.strerror or e}") from None
            log.warning("study journal %s has a partial record but is read-only (%s): reading its complete "
                        "records only", self._file_path, e.strerror)
        self._log_number_offset = {0: 0}

    def _cut_tail(self) -> None:
        """(Lock held.) Move a last line without its newline aside."""
        with open(self._file_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = _last_newline(f, size) + 1
            f.seek(keep)
            tail = f.read()
        self._aside(tail, f"a cut-off last record ({len(tail)} bytes)")
        os.truncate(self._file_path, keep)

    def _split_glued(self) -> None:
        """(Lock held.) Split lines where a complete record was appended onto a cut-off one."""
        with open(self._file_path, "rb") as f:
            lines = f.read().split(b"\n")
        partial, fixed = [], []
        for number, line in enumerate(lines[:-1], start=1):
            if _parse(line) is not None:
                fixed.append(line)
                continue
            start = _glued_record(line)
            if start is None:
                raise StudyError(
                    f"study journal {self._file_path}: line {number} is damaged and is not a cut-off write "
                    f"({line[:60]!r}...); restore the file from a backup or start another study (study=...)")
            partial.append(line[:start])
            if start < len(line):
                fixed.append(line[start:])
        if not partial:
            return
        self._aside(b"\n".join(partial) + b"\n", f"{len(partial)} cut-off record(s) inside the file")
        tmp = f"{self._file_path}.repair-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in fixed))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._file_path)

    def _aside(self, data: bytes, what: str) -> None:
        aside = f"{self._file_path}.partial-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            with open(aside, "ab") as f:
                f.write(data)
        except OSError as e:  # a full disk: the bytes are an unusable record either way
            log.warning("study journal %s: could not save %s to %s (%s)", self._file_path, what, aside,
                        e.strerror)
            aside = "nowhere"
        log.warning("study journal %s: %s from an interrupted write moved to %s; all complete records "
                    "are kept", self._file_path, what, aside)


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _glued_record(line: bytes) -> int | None:
    """Where the complete record glued after a cut-off one starts in `line` (len(line) for a blank
    line: nothing to keep), or None. A record's start cannot occur inside a JSON string (its quotes
    would be escaped), and a nested dict starting the same way would not parse to the line's end."""
    if not line.strip():
        return len(line)
    start = line.find(_RECORD, 1)
    while start != -1:
        if _parse(line[start:]) is not None:
            return start
        start = line.find(_RECORD, start + 1)
    return None


def _last_newline(f, size: int, block: int = 1 << 16) -> int:
    """Offset of the last b'\\n' in the open file `f` of `size` bytes, or -1."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        at = f.read(end - start).rfind(b"\n")
        if at != -1:
            return start + at
        end = start
    return -1


def _truncate_quietly(path: str, size: int) -> None:
    try:
        os.truncate(path, size)
    except OSError as e:
        log.warning("study journal %s: could not remove a partial write (%s); it is moved aside on the "
                    "next write", path, e.strerror)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from nas.urls import redact

    return redact(url)


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
    # Heartbeat and start time before owner: a reaper that sees the owner also sees them.
    study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
    study._storage.set_trial_system_attr(trial_id, STARTED_ATTR, _started(os.getpid()))
    study._storage.set_trial_system_attr(trial_id, WORKER_ATTR, this_worker())
    return optuna.Trial(study, trial_id)


class Heartbeat:
    """Refresh the running trial's heartbeat every `interval` seconds from a daemon thread.

    `taken` turns True when the trial was finished by another process (reaped as lost): the beats
    stop, and the owner's result will be refused by the storage."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float):
        self.taken = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(study, trial_id, interval), daemon=True)

    def _beat(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                self.taken = True
                return
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the trial
                log.warning("heartbeat of trial %d failed: %s", trial_id, e)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks after boot, field 22 of /proc/<pid>/stat), or
    None where unknown. With the pid it names one process: pids are reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` exists and, when `started` is known, is the one that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _started(pid) if started is not None else None
    return now is None or now == started


# (study name, trial id) -> (the heartbeat value last seen, this process's monotonic time it was
# first seen): a heartbeat is judged by how long it stays unchanged, never by its value.
_seen: dict[tuple[str, int], tuple[Any, float]] = {}


def _is_lost(t: FrozenTrial, study_name: str, grace_period: float, now: float) -> bool:
    worker = t.system_attrs.get(WORKER_ATTR)
    # No owner: a worker died between its claim and writing its name (pop_trial writes it at once).
    # Nothing names a process to ask, so the heartbeat rule below decides: absent for grace_period.
    if worker is not None:
        host, _, pid = str(worker).rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return not _alive(int(pid), t.system_attrs.get(STARTED_ATTR))  # sure; a live worker keeps its trial
    key, beat = (study_name, t._trial_id), t.system_attrs.get(HEARTBEAT_ATTR)
    seen = _seen.get(key)
    if seen is None or seen[0] != beat:
        _seen[key] = (beat, now)
        return False
    return now - seen[1] > grace_period


def release(study: optuna.Study, t: FrozenTrial, reason: str) -> bool:
    """Fail the RUNNING trial `t` as lost with `reason` and enqueue a retry with its parameters.
    False (and nothing enqueued) when another process finished it first."""
    # Attributes first: a finished trial can no longer be annotated. If another reaper wins the
    # state change below, it wrote the same attributes and it alone enqueues the retry.
    try:
        study._storage.set_trial_user_attr(t._trial_id, "nas_state", LOST)
        study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
        if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    retry_of = t.user_attrs.get("retry_of", t.number)
    study.enqueue_trial(dict(t.params), user_attrs={"retry_of": retry_of}, skip_if_exists=False)
    return True


def reap_lost(study: optuna.Study, grace_period: float) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and enqueue their retries. Returns their numbers."""
    now, reaped = time.monotonic(), []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        if not _is_lost(t, study.study_name, grace_period, now):
            continue
        worker = t.system_attrs.get(WORKER_ATTR)
        if release(study, t, f"worker {worker} stopped"):
            reaped.append(t.number)
            log.warning("trial %d lost with its worker %s: retrying it", t.number, worker)
    alive = {(study.study_name, t._trial_id) for t in running if t.number not in reaped}
    for key in [k for k in _seen if k[0] == study.study_name and k not in alive]:
        del _seen[key]
    return reaped
