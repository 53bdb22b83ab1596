"""`nas-dashboard`: the MLflow UI on the project's tracking store, on 127.0.0.1, until Ctrl-C.

    nas-dashboard                      # runs/mlflow/mlflow.db on http://127.0.0.1:5000
    nas-dashboard --port 5001
    nas-dashboard --uri sqlite:////data/other/mlflow.db
    nas-dashboard --host 0.0.0.0 --expose --allowed-hosts gpu-box.lab,gpu-box.lab:*

It runs `mlflow server` with light settings (one worker, no job-execution processes: 2 processes
and ~0.5 GB instead of ~15 and 3 GB), waits until it answers, prints the URL and stays in the
foreground; its log goes to runs/dashboard/mlflow-<port>.log (printed) so the terminal stays
readable.

The server has no login: whoever reaches its port can read, create and delete experiments. So it
binds the loopback interface unless --expose is given with another --host. MLflow's allowed-hosts
check does not change that (it only stops DNS rebinding: a client that sends `Host: localhost`
passes it), but an exposed server gets an explicit list (this machine's names and the bound
address, any port), never MLflow's default, which also admits every private-network address.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nas.cli import hide_password

STARTUP_TIMEOUT = 90.0
DESCRIPTION = """\
Open the MLflow UI on the project's tracking store (by default runs/mlflow/mlflow.db, where
nas-search, nas-report and nas-train log their runs): it starts `mlflow server` on 127.0.0.1,
prints the address to open in a browser and stays in the foreground until Ctrl-C. The server's
log goes to runs/dashboard/mlflow-<port>.log."""
EXAMPLES = """\
examples:
  nas-dashboard                                  # then open http://127.0.0.1:5000
  nas-dashboard --port 5001
  nas-dashboard --uri sqlite:////data/other/mlflow.db
  nas-dashboard --host 0.0.0.0 --expose          # reachable from other machines, with no login

The optuna-dashboard view of a study: optuna-dashboard runs/search/<study>/journal.log"""
LOG_DIR = Path("runs") / "dashboard"


class DashboardError(Exception):
    """A one-line reason the dashboard cannot start."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nas-dashboard", description=DESCRIPTION, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only; another needs --expose)")
    p.add_argument("--expose", action="store_true",
                   help="allow a --host other than loopback: anyone who can reach the port can then read "
                        "and change every run (the server has no login)")
    p.add_argument("--allowed-hosts", default=None, metavar="LIST",
                   help="with --expose: the Host headers the server answers, comma-separated, wildcards "
                        "allowed (default: this machine's names and the --host address, any port)")
    p.add_argument("--uri", default=None,
                   help="tracking store (default: the project's SQLite store, runs/mlflow/mlflow.db)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port: expected 1 to 65535, got {args.port}")
    return args


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(args: argparse.Namespace) -> str | None:
    """The allowed-hosts setting for a server bound to a non-loopback --host given with --expose
    (None for loopback: MLflow's default then admits this machine only); DashboardError without it."""
    if is_loopback(args.host):
        return None
    if not args.expose:
        raise DashboardError(f"--host {args.host} is not a loopback address: anyone who can reach it could "
                             "read and change every run (the server has no login); add --expose to serve "
                             "it anyway")
    if args.allowed_hosts:
        return args.allowed_hosts
    wildcard = args.host in ("0.0.0.0", "::")
    names = [socket.gethostname(), socket.getfqdn()] if wildcard else [args.host]
    return ",".join(dict.fromkeys(h for n in [*names, "localhost", "127.0.0.1"] for h in (n, f"{n}:*")))


def store_of(uri: str | None) -> tuple[str, str | None]:
    """(backend store URI, artifacts folder) of the store to show; checks that a local store exists."""
    from nas.tracking import default_store

    uri = uri or default_store()[0]
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise DashboardError(f"no tracking store at {db}: run nas-search first, or pass --uri")
        from nas.tracking import relocate_artifacts

        relocate_artifacts(uri)  # a runs/ folder that was moved still finds its artifacts
        return uri, str(db.resolve().parent / "artifacts")
    if "://" not in uri:
        raise DashboardError(f"--uri {hide_password(uri, uri)!r} is not a tracking URI "
                             "(sqlite:///path/mlflow.db, postgresql://...)")
    return uri, None


def experiment_links(uri: str, base: str) -> list[tuple[str, str, str | None]]:
    """(experiment name, link to its runs, link to its final comparison's chart or None) in MLflow's
    model-training view, for each experiment of a local store: a plain link opens MLflow 3's GenAI
    view, which shows none of it. Read with sqlite3 (no MLflow import); other stores give none."""
    import sqlite3

    from nas.tracking import experiment_url

    if not uri.startswith("sqlite:///"):
        return []
    try:
        with sqlite3.connect(f"file:{uri[len('sqlite:///'):]}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                              "AND name LIKE 'nas/%' ORDER BY experiment_id").fetchall()
    except sqlite3.Error:
        return []  # a store MLflow has not finished creating: the UI still works
    return [(name, experiment_url(base, str(eid), "nas"),
             None if name == "nas/train" else experiment_url(base, str(eid), "nas-compare", charts=True))
            for eid, name in rows]


def open_log(port: int) -> tuple[Path, int]:
    """(path, descriptor) of the server's log, runs/dashboard/mlflow-<port>.log, created private
    (0600) and never through a symbolic link, so that nobody can make it overwrite another file."""
    log = LOG_DIR / f"mlflow-{port}.log"
    try:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        if LOG_DIR.is_symlink():
            raise DashboardError(f"{LOG_DIR} is a symbolic link: refusing to write the server log through it")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        return log, os.open(log, flags, 0o600)
    except OSError as e:
        if log.is_symlink():
            raise DashboardError(f"server log {log} is a symbolic link: refusing to write through it "
                                 "(remove it)") from None
        raise DashboardError(f"cannot write the server log {e.filename}: {e.strerror}") from None


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise DashboardError(f"port {port} on {host} is in use (choose another with --port)") from None


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, uri: str) -> None:
    from nas.tracking.server import wait_until_up as up

    why = up(proc, url, STARTUP_TIMEOUT)
    if why is None:
        return
    if proc.poll() is not None:  # its last line says why
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        why += f": {hide_password(tail[0], uri)}"
    raise DashboardError(f"mlflow server {why} (log: {log})")


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

    allowed = check_exposure(args)
    if args.uri and args.uri.startswith(("http://", "https://")):
        print(f"{hide_password(args.uri, args.uri)} is a tracking server: it serves its own dashboard, "
              "open it in a browser")
        return 0
    uri, artifacts = store_of(args.uri)
    check_port(args.host, args.port)
    log, fd = open_log(args.port)
    cmd = server_command(uri, args.port, args.host, artifacts)
    if allowed is not None:
        cmd += ["--allowed-hosts", allowed]
        print(f"nas-dashboard: warning: serving {args.host}:{args.port} beyond this machine: anyone who can "
              f"reach it can read and change every run (no login; the Host check, allowed hosts {allowed}, "
              "only stops DNS rebinding)", file=sys.stderr, flush=True)
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
    url, local = f"http://{shown}:{args.port}", f"http://{args.host}:{args.port}"
    if allowed is not None and args.host in ("0.0.0.0", "::"):
        local = f"http://127.0.0.1:{args.port}"  # the health check: any interface answers it
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(cmd, env=server_env(uri), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # Ctrl-C and SIGTERM stop the server (SIGINT is set too: a shell ignores it in background jobs).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        wait_until_up(proc, local, log, uri)
        print(f"MLflow dashboard: {url}  (store {hide_password(uri, uri)}; server log {log}; Ctrl-C to stop)",
              flush=True)
        for name, runs, compare in experiment_links(uri, url):
            print(f"  {name}: runs {runs}" + (f"\n  {' ' * len(name)}  comparison {compare}" if compare else ""),
                  flush=True)
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
