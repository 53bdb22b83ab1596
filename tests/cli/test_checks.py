"""Every CLI checks its settings, and the folders it will write, before any work through the real
console scripts: a bad setting or an unusable folder gives one line on stderr (no traceback), exit
status 2, and nothing on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

from nas.cli import Failure, describe, hide_password


def cli(prog: str, args: list[str], cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which(prog)
    assert exe, f"{prog} is not installed"
    env = {**os.environ, "NAS_CACHE_DIR": str(cwd.parent / "cache")}
    for key in ("NAS_DEBUG", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def assert_one_line(p: subprocess.CompletedProcess, expect: str, status: int = 2) -> None:
    assert p.returncode == status, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and expect in lines[0], p.stderr


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def work(tmp_path):
    """An empty working folder inside tmp_path: a study named ../../../x would land in tmp_path."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


SEARCH_CASES = [
    ("n_trials=-3", "n_trials: expected an integer >= 0, got -3"),
    ("workers=-2", "workers: expected an integer >= 0, got -2"),
    ("study=../../../x", "study: expected a plain name"),
    ("study=a/b", "study: expected a plain name"),
    ("study=", "study: expected a plain name"),
    ("threads=-1", "threads: expected an integer >= 1 or None, got -1"),
    ("device=banana", "device: expected auto, cpu"),
    ("seed=-1", "seed: expected an integer >= 0"),
    ("pruner.name=sometimes", "pruner.name: expected one of none, median"),
    ("pruner.n_startup_trials=-1", "pruner.n_startup_trials"),
    ("pruner.n_warmup_steps=-5", "pruner.n_warmup_steps"),
    ("pruner.min_resource=0", "pruner.min_resource"),
    ("pruner.reduction_factor=1", "pruner.reduction_factor: expected an integer >= 2"),
    ("report.top_k=0", "report.top_k: expected an integer >= 1"),
    ("report.seeds=0", "report.seeds: expected an integer >= 1"),
    ("tracking.timeout=0", "tracking.timeout"),
    ("trainer.temperature=0", "trainer.temperature"),
    ("baselines=[lstm,lsmt]", "baselines: expected reference cell names"),
    ("search_space.name=zz", "unknown search space 'zz'"),
    ("controller.name=zz", "unknown controller 'zz'"),
    ("storage.heartbeat_interval=0", "storage.heartbeat_interval must be >= 1"),
    ("storage.grace_period=5", "storage.grace_period must be >="),
]


@pytest.mark.parametrize("arg,expect", SEARCH_CASES, ids=[c[0] for c in SEARCH_CASES])
def test_search_checks_every_setting_before_work(tmp_path, work, arg, expect):
    p = cli("nas-search", [arg], work)
    assert_one_line(p, expect)
    assert tree(tmp_path) == ["work"], "something was written"


@pytest.mark.parametrize("args,expect", [
    (["trainer.temperature=0"], "trainer.temperature"),
    (["seed=-1"], "seed: expected an integer >= 0"),
    (["cell=latin1.json"], "cell file 'latin1.json': not UTF-8 text"),
    (["cell=bad.json"], "cell file 'bad.json': invalid JSON"),
])
def test_train_checks_before_the_run_folder(work, args, expect):
    (work / "latin1.json").write_bytes('{"state": ["h"], "name": "caf\u00e9"}'.encode("latin-1"))
    (work / "bad.json").write_text("{oops")
    before = tree(work)
    p = cli("nas-train", args, work)
    assert_one_line(p, expect)
    assert tree(work) == before


@pytest.mark.parametrize("prog,args,expect", [
    ("nas-worker", ["study=nope"], "no study named 'nope' in runs/search/nope/journal.log"),
    ("nas-worker", [], "study: missing"),
    ("nas-worker", ["study=../x"], "study: expected a plain name"),
    ("nas-worker", ["study=s", "replica=-1"], "replica"),
    ("nas-worker", ["study=s", "storage.grace_period=1"], "storage.grace_period"),
    ("nas-report", ["study=nope"], "no study named 'nope'"),
    ("nas-report", ["study=s", "report.top_k=0"], "report.top_k"),
    ("nas-export", ["study=../x"], "study: expected a plain name"),
    ("nas-export", ["study=nope"], "no study named 'nope'"),
    ("nas-export", ["cell=lstm", "name=not-a-name"], "name: expected a Python identifier"),
])
def test_worker_report_export_check_before_work(tmp_path, work, prog, args, expect):
    p = cli(prog, args, work)
    assert_one_line(p, expect)
    assert tree(tmp_path) == ["work"], "something was written"


@contextlib.contextmanager
def read_only(folder, inside: str | None = None):
    """`folder` (created, with an empty subfolder `inside`) made read-only for everyone, root
    included: a tmpfs remounted read-only (root: chmod does not stop root), else mode 0555."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        made = [folder / inside] if inside else []
        for f in made:
            f.mkdir()
        for f in [*made, folder]:
            f.chmod(0o555)
        try:
            yield folder
        finally:
            for f in [folder, *made]:
                f.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        if inside:
            (folder / inside).mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def readonly(tmp_path):
    """A folder holding an empty runs/, neither writable."""
    with read_only(tmp_path / "ro", "runs") as folder:
        yield folder


@pytest.mark.parametrize("prog,args", [
    ("nas-train", ["trainer.steps=2"]),
    ("nas-search", ["n_trials=1"]),
    ("nas-export", ["cell=lstm"]),
])
def test_a_read_only_runs_folder_is_one_line(readonly, prog, args):
    p = cli(prog, args, readonly)
    assert_one_line(p, f"{readonly / 'runs'} is")
    assert "read-only" in p.stderr or "not writable" in p.stderr
    assert tree(readonly) == ["runs"]


@pytest.mark.parametrize("prog,args,expect", [
    ("nas-train", ["hydra.run.dir=afile/run"], "its parent {} is not a folder"),
    ("nas-search", ["out_dir=afile/s"], "its parent {} is not a folder"),
    ("nas-export", ["cell=lstm", "dest=afile/x"], "its parent {} is not a folder"),
    ("nas-train", ["data.cache_dir=afile/cache", "hydra.run.dir=out", "trainer=tiny", "trainer.steps=1"],
     "cannot use afile/cache: Not a directory"),
])
def test_a_file_in_the_way_is_one_line(work, prog, args, expect):
    (work / "afile").write_text("a file, not a folder")
    p = cli(prog, args, work)
    assert_one_line(p, expect.format(work / "afile"))
    assert not (work / "afile").is_dir()


def test_hide_password():
    uri = "postgresql://nas:p%40ss@db/nas"
    assert hide_password(f"cannot open {uri}", uri) == "cannot open postgresql://nas:***@db/nas"
    assert hide_password("password p@ss refused", uri) == "password *** refused"
    assert hide_password("sqlite:///x.db", "sqlite:///x.db") == "sqlite:///x.db"


def test_a_worker_that_dies_exits_1_with_one_line(work):
    """A local worker stopped by the machine (here: its trial folder is read-only) is a failure of
    the work, not of the settings: exit status 1, one line saying which worker and why."""
    with read_only(work / "runs" / "search" / "s" / "trials"):
        p = cli("nas-search", ["study=s", "workers=1", "n_trials=1", "trainer=tiny", "trainer.steps=2",
                               "trainer.eval_every=1", "baselines=[]", "report.enabled=false",
                               "tracking.enabled=false", "export.enabled=false"], work, timeout=300)
    assert_one_line(p, "stopped: EROFS" if os.geteuid() == 0 else "stopped: EACCES", status=1)
    assert "rerun the same command" in p.stderr


def test_describe_gives_one_line_and_the_status():
    assert describe(PermissionError(13, "Permission denied", "/x/runs")) == (
        "error: cannot use /x/runs: Permission denied", 2)
    assert describe(Failure("worker w stopped: EIO")) == ("error: worker w stopped: EIO", 1)
    assert describe(KeyError("lstmm")) == ("error: lstmm", 2)
    assert describe(RuntimeError("boom\nmore")) == ("internal error (RuntimeError): boom", 1)
