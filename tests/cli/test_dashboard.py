"""`nas-dashboard` is no way in: loopback unless --expose (then a warning and an explicit
allowed-hosts list), its log never written through a planted symlink, no password shown."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PASSWORD = "s3cretPW"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard(args: list[str], cwd, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = shutil.which("nas-dashboard")
    assert exe, "nas-dashboard is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture
def project(tmp_path):
    """A folder with an (empty) project tracking store, runs/mlflow/mlflow.db."""
    (tmp_path / "runs" / "mlflow").mkdir(parents=True)
    (tmp_path / "runs" / "mlflow" / "mlflow.db").touch()
    return tmp_path


def test_a_non_loopback_host_needs_expose(tmp_path):
    p = dashboard(["--host", "0.0.0.0"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and "--host 0.0.0.0 is not a loopback address" in p.stderr
    assert "--expose" in p.stderr and p.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_the_log_never_follows_a_planted_symlink(project):
    port = free_port()
    victim = project / "victim.txt"
    victim.write_text("precious")
    log = project / "runs" / "dashboard" / f"mlflow-{port}.log"
    log.parent.mkdir()
    log.symlink_to(victim)
    # the old, shared location too: the dashboard must not write there at all
    shared = Path(tempfile.gettempdir()) / f"nas-dashboard-{port}.log"
    if not shared.exists() and not shared.is_symlink():
        shared.symlink_to(victim)
    try:
        p = dashboard(["--port", str(port)], project)
    finally:
        if shared.is_symlink() and shared.resolve() == victim:
            shared.unlink()
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr
    assert f"server log runs/dashboard/mlflow-{port}.log is a symbolic link" in p.stderr
    assert victim.read_text() == "precious" and log.is_symlink()


def test_a_password_is_never_shown(tmp_path):
    # MLflow rejects the scheme with a message that quotes the whole URI: ours must hide the password
    p = dashboard(["--port", str(free_port()), "--uri", f"foo://nas:{PASSWORD}@db-host/nas"], tmp_path)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr
    assert "mlflow server exited" in p.stderr and "foo://nas:***@db-host/nas" in p.stderr
    assert PASSWORD not in p.stdout + p.stderr
    p = dashboard(["--uri", f"http://nas:{PASSWORD}@mlflow-host:5000"], tmp_path)
    assert p.returncode == 0 and "http://nas:***@mlflow-host:5000 is a tracking server" in p.stdout
    assert PASSWORD not in p.stdout + p.stderr


def status_with_host(port: int, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_expose_warns_and_passes_an_explicit_allowed_hosts_list(project):
    port = free_port()
    proc = subprocess.Popen([shutil.which("nas-dashboard"), "--host", "0.0.0.0", "--expose", "--port", str(port)],
                            cwd=project, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        warning = proc.stderr.readline()
        line = proc.stdout.readline()  # printed once the server answers
        assert line.startswith("MLflow dashboard: http://"), (line, warning)
        assert warning.startswith("nas-dashboard: warning: serving 0.0.0.0") and "read and change" in warning
        assert "allowed hosts" in warning and f"{socket.gethostname()}:*" in warning
        # MLflow's default would admit any private address; the explicit list does not
        assert status_with_host(port, "192.168.7.7") == 403
        assert status_with_host(port, f"localhost:{port}") == 200
        log = project / "runs" / "dashboard" / f"mlflow-{port}.log"
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600 and "--allowed-hosts" not in line
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0


def test_the_dashboard_links_each_experiment_in_the_model_training_view(tmp_path):
    import sqlite3

    from nas.cli.dashboard import experiment_links

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:  # the columns of MLflow's experiments table that are read
        con.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
        con.executemany("INSERT INTO experiments VALUES (?, ?, ?)", [
            (0, "Default", "active"), (1, "nas/graph-evolution", "active"), (2, "nas/train", "active"),
            (3, "nas/old", "deleted")])
    links = experiment_links(f"sqlite:///{db}", "http://127.0.0.1:5000")
    assert [name for name, _, _ in links] == ["nas/graph-evolution", "nas/train"]
    (_, runs, compare), (_, train_runs, train_compare) = links
    assert runs.startswith("http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning")
    assert compare.endswith("viewStateShareKey=nas-compare&compareRunsMode=CHART")
    assert "/experiments/2/" in train_runs and train_compare is None
    assert experiment_links(f"sqlite:///{tmp_path / 'missing.db'}", "http://x") == []
    assert experiment_links("postgresql://u@h/db", "http://x") == []
