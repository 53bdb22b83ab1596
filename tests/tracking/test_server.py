"""nas.tracking.server: the local store, `nas-dashboard`'s server, and a moved store's artifacts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

from test_tracking import MlflowClient  # imported there after the no-telemetry environment is set

import nas.tracking
from nas.tracking import Tracker


def test_dashboard_says_why_it_cannot_start(tmp_path):
    exe = shutil.which("nas-dashboard")
    p = subprocess.run([exe, "--uri", f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "no tracking store" in p.stderr and len(p.stderr.splitlines()) == 1
    (tmp_path / "x.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([exe, "--uri", f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port)],
                           capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and f"port {port}" in p.stderr and "in use" in p.stderr


def test_cli_modules_import_without_mlflow():
    code = "import sys, nas.cli.dashboard, nas.cli.report, nas.tracking; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_moved_store_finds_its_artifacts(tmp_path, monkeypatch):
    """MLflow records absolute artifact paths: opening a moved runs/ re-points them (relocate_artifacts)."""
    from nas.cell import known_cell

    run_dir = tmp_path / "a" / "runs" / "train" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "cell.json").write_text(known_cell("gru").to_json())
    (run_dir / "sample.txt").write_text("to be or not")
    result = {"cell_hash": "h", "budget": "b", "seed": 0, "steps": 6, "val_bpc": 3.0, "curve": [[3, 3.5], [6, 3.0]],
              "run_dir": str(run_dir)}
    monkeypatch.chdir(tmp_path / "a")
    run_id = Tracker().log_train("gru", result, {"seed": 0, "trainer": {"steps": 6}})
    assert run_id is not None
    monkeypatch.chdir(tmp_path)
    shutil.move(tmp_path / "a" / "runs", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    assert nas.tracking.relocate_artifacts(uri) == 1
    assert nas.tracking.relocate_artifacts(uri) == 0  # already in place
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.artifact_uri.startswith((tmp_path / "b" / "mlflow" / "artifacts").as_uri())
    assert Path(client.download_artifacts(run_id, "sample.txt", str(tmp_path))).read_text() == "to be or not"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"cell.json", "cell.png", "sample.txt"}
    assert nas.tracking.relocate_artifacts(f"sqlite:///{tmp_path / 'none.db'}") == 0
    assert nas.tracking.relocate_artifacts("http://127.0.0.1:1") == 0


def test_wait_until_up_says_why_a_server_is_not_up():
    from nas.tracking.server import wait_until_up

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    assert wait_until_up(exited, url, timeout=5) == "exited with status 3"
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert wait_until_up(silent, url, timeout=1) == "did not answer within 1 s"
    finally:
        silent.kill()
        silent.wait()
