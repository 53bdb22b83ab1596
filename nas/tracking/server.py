"""The project's local MLflow store: where it lives, how `nas-dashboard` serves it, and re-pointing its
artifacts after `runs/` moved. No MLflow import (relocate_artifacts edits the SQLite file itself)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("nas.tracking")

# Processes we start or import must never phone home (this machine has no network).
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def default_store() -> tuple[str, str]:
    """The project's tracking store: (SQLite URI, artifact root URI), under ./runs/mlflow/."""
    root = Path("runs/mlflow").resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def server_command(uri: str, port: int, host: str = "127.0.0.1", artifacts: str | None = None) -> list[str]:
    """`mlflow server` with light settings: one worker (the default starts ~15 processes, 3 GB). The
    store URI is not on the command line (other local users can read a process's arguments; it may
    hold a database password): server_env(uri) passes it as MLFLOW_BACKEND_STORE_URI."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    return cmd + (["--artifacts-destination", artifacts] if artifacts else [])


def server_env(uri: str | None = None) -> dict[str, str]:
    """The environment for `mlflow server`: no job-execution workers (2 processes, ~0.5 GB), quiet, and
    the backend store `uri` if given."""
    env = {**os.environ, **QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if uri is not None:
        env["MLFLOW_BACKEND_STORE_URI"] = uri
    return env


def start_server(uri: str, port: int, log: Path, artifacts: str | None = None) -> subprocess.Popen:
    """`mlflow server` (server_command, server_env) for the store `uri` on localhost:`port`, in a process
    group of its own (stop it with os.killpg), its output appended to `log`."""
    with open(log, "a") as out:
        return subprocess.Popen(server_command(uri, port, artifacts=artifacts), env=server_env(uri),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> str | None:
    """Poll `url`/health until the server `proc` answers 200: None then, else why it is not up
    ("exited with status N" or "did not answer within T s")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            if r.status == 200:
                return None
        time.sleep(0.25)
    return f"did not answer within {timeout:.0f} s"


def safe_name(text: str, keep: str = "") -> str:
    """`text` with only the characters MLflow accepts in keys (and a path accepts in names)."""
    return re.sub(rf"[^\w.\-{re.escape(keep)}]", "_", text)


def relocate_artifacts(uri: str) -> int:
    """Point a local store's runs at the artifacts folder next to its database, after `runs/` moved.

    MLflow records absolute artifact locations (file:///old/runs/mlflow/artifacts/<experiment>) and
    has no relative form, so a moved or copied `runs/` would show runs without their files. Every
    experiment laid out by this project (<root>/artifacts/<experiment>) whose root is not the one
    next to `uri`'s database is re-pointed, with its runs, in the database (sqlite3: no MLflow import).
    Returns the number of experiments re-pointed; 0 for a store that is not a local SQLite file.
    """
    if not uri.startswith("sqlite:///"):
        return 0
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return 0
    import sqlite3

    root = (db.resolve().parent / "artifacts").as_uri()
    moved = 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
            for exp_id, name, where in rows:
                old = _old_root(where or "", name)
                if old is None or old == root:
                    continue
                new = f"{root}/{safe_name(name)}"
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                            (new, len(where) + 1, exp_id, len(where) + 1, f"{where}/"))
                moved += 1
    except sqlite3.Error as e:  # not an MLflow store yet (or locked): MLflow itself will say what is wrong
        log.debug("nas: cannot re-point artifacts in %s: %s", db, e)
        return 0
    if moved:
        log.info("nas: MLflow store %s moved: %d experiment(s) now find their artifacts in %s", db, moved, root)
    return moved


def _old_root(where: str, name: str) -> str | None:
    """The artifacts root of a location this project wrote (file:///<root>/<experiment>), else None."""
    suffix = f"/{safe_name(name)}"
    if not where.startswith("file://") or not where.endswith(suffix):
        return None
    root = where[: -len(suffix)]
    return root if root.endswith("/artifacts") else None
