"""The study's journal file, never left unreadable by a partial write.

Partial writes: a journal record is one line, appended under the journal's lock. A writer that dies
mid-write (or a full disk) leaves a cut-off last line, onto which the next append would be glued,
making the whole study unreadable. So every append first moves such a tail aside (to
`journal.log.partial-<time>-<pid>`, with a warning), and an append that fails takes its own partial
bytes back; opening the storage does the same, and also splits a line damaged that way by older
versions. A damaged line that is not such a glued record is an error naming the file: never silently
dropped, since every later record may depend on it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from nas.search import optuna_adapter
from nas.search.errors import StudyError

log = logging.getLogger("nas.search")

_RECORD = b'{"op_code":'  # how every Optuna journal record starts (json.dumps of its log dict)


class SafeJournalBackend(JournalFileBackend):
    """Optuna's journal file, never left with a partial last line (see the module docstring).

    Locking: Optuna's O_EXCL lock file (works on every filesystem; symlinks do not on some mounts).
    A writer holds it for milliseconds; one killed while holding it leaves the file behind, so it is
    taken over after 5 s rather than Optuna's default 30 s (a killed worker must not stall the others)."""

    def __init__(self, file_path: str) -> None:
        self.path = file_path
        self._file_lock = JournalFileOpenLock(file_path, grace_period=5)
        super().__init__(file_path, lock_obj=self._file_lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(r, separators=(",", ":")) for r in logs) + "\n").encode()
        with optuna_adapter.journal_lock(self._file_lock):
            self._cut_tail()
            size = os.path.getsize(self.path)
            try:
                with open(self.path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                _truncate_quietly(self.path, size)  # take our partial record back
                raise

    def needs_repair(self) -> bool:
        """Whether the file ends in a cut-off line or its last line is not a record (cheap: reads
        the end only). Without the lock, so a tail may be another writer's append in progress:
        `repair` checks again under the lock."""
        with open(self.path, "rb") as f:
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
        try:
            with optuna_adapter.journal_lock(self._file_lock):
                self._cut_tail()
                self._split_glued()
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StudyError(f"cannot repair the study journal {self.path}: {e.strerror or e}") from None
            log.warning("study journal %s has a partial record but is read-only (%s): reading its complete "
                        "records only", self.path, e.strerror)
        optuna_adapter.forget_read_positions(self)

    def _cut_tail(self) -> None:
        """(Lock held.) Move a last line without its newline aside."""
        with open(self.path, "rb") as f:
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
        os.truncate(self.path, keep)

    def _split_glued(self) -> None:
        """(Lock held.) Split lines where a complete record was appended onto a cut-off one."""
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        partial, fixed = [], []
        for number, line in enumerate(lines[:-1], start=1):
            if _parse(line) is not None:
                fixed.append(line)
                continue
            start = _glued_record(line)
            if start is None:
                raise StudyError(
                    f"study journal {self.path}: line {number} is damaged and is not a cut-off write "
                    f"({line[:60]!r}...); restore the file from a backup or start another study (study=...)")
            partial.append(line[:start])
            if start < len(line):
                fixed.append(line[start:])
        if not partial:
            return
        self._aside(b"\n".join(partial) + b"\n", f"{len(partial)} cut-off record(s) inside the file")
        tmp = f"{self.path}.repair-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in fixed))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _aside(self, data: bytes, what: str) -> None:
        aside = f"{self.path}.partial-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            with open(aside, "ab") as f:
                f.write(data)
        except OSError as e:  # a full disk: the bytes are an unusable record either way
            log.warning("study journal %s: could not save %s to %s (%s)", self.path, what, aside,
                        e.strerror)
            aside = "nowhere"
        log.warning("study journal %s: %s from an interrupted write moved to %s; all complete records "
                    "are kept", self.path, what, aside)


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
