"""Workers under faults: errors of the machine are retried, not the cell's failure; a trial taken by
another process is a logged event; a worker that dies makes the search fail with one line."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_search import config

from nas.config import StorageConfig
from nas.search.launch import run_processes
from nas.search.storage import StudyError, make_storage, release, top_up
from nas.search.study import open_study
from nas.search.worker import LocalWorker, WorkerFailed, build_objective, infrastructure_error, run_trials
from nas.trials import Outcome

STORAGE = StorageConfig(heartbeat_interval=1, grace_period=12)
ENOSPC = OSError(errno.ENOSPC, "No space left on device", "/runs/x/weights.pt")


def study_of(tmp_path: Path, n_trials: int) -> optuna.Study:
    study = optuna.create_study(study_name="w", storage=make_storage(None, tmp_path))
    top_up(study, n_trials)
    return study


def summary(study: optuna.Study) -> list[tuple[str, str | None]]:
    return [(t.user_attrs.get("nas_state") or t.state.name, t.user_attrs.get("retry_of")) for t in study.trials]


def chained(outer: type[Exception], inner: BaseException) -> BaseException:
    """`outer` raised `from inner`."""
    e = outer("wrapped")
    e.__cause__ = inner
    return e


@pytest.mark.parametrize(("error", "reason"), [
    (ENOSPC, "ENOSPC: No space left on device (/runs/x/weights.pt)"),
    (OSError(errno.EIO, "Input/output error"), "EIO: Input/output error"),
    (PermissionError(errno.EACCES, "Permission denied"), "EACCES: Permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "EROFS: Read-only file system"),
    (chained(RuntimeError, OSError(errno.EDQUOT, "Disk quota exceeded")), "EDQUOT: Disk quota exceeded"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
     "cannot write a file (disk full?): [enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
])
def test_errors_of_the_machine_are_recognised(error, reason):
    assert infrastructure_error(error) == reason


@pytest.mark.parametrize("error", [ValueError("bad cell"), FileNotFoundError(errno.ENOENT, "No such file"),
                                   RuntimeError("CUDA error: an illegal memory access"), None])
def test_errors_of_the_cell_are_not(error):
    assert infrastructure_error(error) is None


def test_a_full_disk_sends_the_trial_back_and_stops_the_worker(tmp_path):
    study = study_of(tmp_path, n_trials=2)

    def objective(trial):
        trial.suggest_float("x", 0, 1)
        raise ENOSPC

    with pytest.raises(WorkerFailed) as e:
        run_trials(study, objective, STORAGE)
    message = str(e.value)
    assert "\n" not in message and "stopped: ENOSPC: No space left on device" in message
    assert "trial 0 will be retried with the same cell" in message and "rerun the same command" in message
    assert summary(study) == [(Outcome.LOST, None), ("WAITING", None), ("WAITING", 0)]
    assert "infrastructure error: ENOSPC" in study.trials[0].user_attrs["reason"]
    # the rerun evaluates the same cell again and meets the budget
    assert run_trials(study, lambda t: t.suggest_float("x", 0, 1), STORAGE).trials == 2
    assert summary(study) == [(Outcome.LOST, None), ("COMPLETE", None), ("COMPLETE", 0)]
    assert study.trials[2].params == study.trials[0].params


def test_a_full_disk_under_the_journal_stops_the_worker_and_leaves_the_study_readable(tmp_path, monkeypatch):
    from nas.search import storage

    study = study_of(tmp_path, n_trials=1)
    fsync = storage.os.fsync

    def objective(trial):
        trial.suggest_float("x", 0, 1)

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(storage.os, "fsync", full)  # from now on, every journal write fails
        return 1.0

    with pytest.raises(WorkerFailed, match="ENOSPC.*trial 0 is retried once a rerun finds this worker gone"):
        run_trials(study, objective, STORAGE)
    monkeypatch.setattr(storage.os, "fsync", fsync)
    again = optuna.load_study(study_name="w", storage=make_storage(None, tmp_path))
    assert [t.state.name for t in again.trials] == ["RUNNING"]


def test_a_trial_taken_by_another_process_is_logged_and_the_worker_goes_on(tmp_path, caplog):
    study = study_of(tmp_path, n_trials=2)
    calls = []

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        calls.append(trial.number)
        if trial.number == 0:  # a reaper elsewhere believed this worker dead
            assert release(study, study._storage.get_trial(trial._trial_id), "worker other:1 stopped")
        if trial.number == 1:
            release(study, study._storage.get_trial(trial._trial_id), "worker other:1 stopped")
            trial.set_user_attr("late", True)  # refused: the trial is finished
        return x

    with caplog.at_level(logging.WARNING, logger="nas.search"):
        done = run_trials(study, objective, STORAGE)
    assert done.trials == 2 and calls == [0, 1, 2, 3]
    assert summary(study) == [(Outcome.LOST, None), (Outcome.LOST, None), ("COMPLETE", 0), ("COMPLETE", 1)]
    taken = [r.getMessage() for r in caplog.records if "finished by another process" in r.getMessage()]
    assert len(taken) == 2 and "worker other:1 stopped" in taken[0]


def test_a_grace_period_shorter_than_the_heartbeat_is_refused(tmp_path):
    study = study_of(tmp_path, n_trials=1)
    with pytest.raises(StudyError, match="grace_period must be >= 2 x heartbeat_interval"):
        run_trials(study, lambda t: 1.0, StorageConfig(heartbeat_interval=20, grace_period=-1))
    assert summary(study) == [("WAITING", None)]


def test_workers_that_fail_or_die_make_the_search_fail_with_one_line(tmp_path):
    cfg = config(tmp_path, "study=nowhere", "workers=2", "n_trials=1", "baselines=[]")
    study = study_of(tmp_path / "elsewhere", n_trials=0)
    killed = LocalWorker(cfg, 7, threads=1)
    killed.proc.kill()
    with pytest.raises(WorkerFailed) as e:
        run_processes(study, cfg, show=False)  # cfg names a study its storage does not hold
    message = str(e.value)
    assert "\n" not in message and message.endswith("rerun the same command to resume")
    for i in (0, 1):
        assert f"worker {i} (pid " in message
    assert message.count("exited with status 2: no study named 'nowhere'") == 2
    assert killed.failure() == f"worker 7 (pid {killed.proc.pid}) was killed by SIGKILL (out of memory?)"


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs, filled up."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with open(mnt / "filler", "wb") as f, pytest.raises(OSError, match="No space"):
            f.write(b"\0" * (2 << 20))
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk_in_a_worker_process(tmp_path, full_disk):
    cfg = config(tmp_path, "study=full", "n_trials=1", "baselines=[]", "search_space=highway",
                 "controller=random", "storage.heartbeat_interval=1", "storage.grace_period=12")
    study = open_study(cfg, multi_objective=False)
    (Path(cfg.out_dir) / "trials").symlink_to(full_disk)  # trials' files go to the full disk
    worker = [sys.executable, "-m", "nas.search.worker", "--study", "full", "--out-dir", cfg.out_dir,
              "--threads", "1"]
    p = subprocess.run(worker, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    [line] = [ln for ln in p.stderr.splitlines() if "error" in ln]
    assert line.startswith("nas-worker: error: worker ") and "ENOSPC" in line and "will be retried" in line
    assert summary(study) == [(Outcome.LOST, None), ("WAITING", 0)]
    (Path(cfg.out_dir) / "trials").unlink()  # space again: the rerun (here in-process) retries the cell
    objective, study.sampler = build_objective(cfg, "cpu")
    assert run_trials(study, objective, cfg.storage).trials == 1
    assert summary(study) == [(Outcome.LOST, None), ("complete", 0)]
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.params == study.trials[0].params


def test_workers_per_device_places_k_workers_on_each_gpu(monkeypatch):
    import torch

    from nas.search.worker import local_workers, pin_device

    assert local_workers(3, None, "auto") == 3
    assert local_workers(3, 2, "auto") == 2  # no GPU here: k workers on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    n = local_workers(1, 2, "auto")
    assert n == 8
    devices = [pin_device("auto", None, i) for i in range(n)]
    assert sorted(devices) == sorted(f"cuda:{g}" for g in range(4) for _ in range(2))
    assert local_workers(1, 2, "cpu") == 2  # a CPU search on a GPU machine
