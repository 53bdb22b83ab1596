"""`nas-dashboard`: the MLflow UI on the project's tracking store, on 127.0.0.1, until Ctrl-C.

    nas-dashboard                      # runs/mlflow/mlflow.db on http://127.0.0.1:5000
    nas-dashboard --port 5001
    nas-dashboard --uri sqlite:////data/other/mlflow.db

It runs `mlflow server` with light settings (one worker, no job-execution processes: 2 processes
and ~0.5 GB instead of ~15 and 3 GB), waits until it answers, prints the URL and stays in the
foreground; its log goes to a file (printed) so the terminal stays readable.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT = 90.0


class DashboardError(Exception):
    """A one-line reason the dashboard cannot start."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nas-dashboard", description="MLflow UI on the project's tracking store")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--uri", default=None,
                   help="tracking store (default: the project's SQLite store, runs/mlflow/mlflow.db)")
    return p.parse_args(argv)


def store_of(uri: str | None) -> tuple[str, str | None]:
    """(backend store URI, artifacts folder) of the store to show; checks that a local store exists."""
    from nas.tracking import default_store

    uri = uri or default_store()[0]
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise DashboardError(f"no tracking store at {db}: run nas-search first, or pass --uri")
        return uri, str(db.resolve().parent / "artifacts")
    if "://" not in uri:
        raise DashboardError(f"--uri {uri!r} is not a tracking URI "
                             "(sqlite:///path/mlflow.db, postgresql://...)")
    return uri, None


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise DashboardError(f"port {port} on {host} is in use (choose another with --port)") from None


def wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise DashboardError(f"mlflow server exited with status {proc.returncode}: {tail[0]} "
                                 f"(log: {log})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise DashboardError(f"mlflow server did not answer within {STARTUP_TIMEOUT:.0f} s (log: {log})")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its uvicorn worker: its whole process group, SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so that the group empties
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(args: argparse.Namespace) -> int:
    from nas.tracking import server_command, server_env

    if args.uri and args.uri.startswith(("http://", "https://")):
        print(f"{args.uri} is a tracking server: it serves its own dashboard, open it in a browser")
        return 0
    uri, artifacts = store_of(args.uri)
    check_port(args.host, args.port)
    log = Path(tempfile.gettempdir()) / f"nas-dashboard-{args.port}.log"
    url = f"http://{args.host}:{args.port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(server_command(uri, args.port, args.host, artifacts), env=server_env(),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    # Ctrl-C and SIGTERM stop the server (SIGINT is set too: a shell ignores it in background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        wait_until_up(proc, url, log)
        print(f"MLflow dashboard: {url}  (store {uri}; server log {log}; Ctrl-C to stop)", flush=True)
        code = proc.wait()
        print(f"nas-dashboard: mlflow server exited with status {code} (log: {log})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nas-dashboard: stopped", file=sys.stderr)
        return 0
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        code = serve(args)
    except DashboardError as e:
        print(f"nas-dashboard: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
