"""A user's install: the wheel built from the repository, installed (not editable) in a fresh virtual
environment, gives commands that work from an empty folder, with the configs, search spaces and
corpus shipped inside the `nas` package and no other top-level name.

The environment sees this interpreter's site-packages (--system-site-packages), so torch and the
other dependencies are not installed again; the tests check that `nas` itself is the wheel's copy,
not the editable checkout that is also on that path. About 30 s on 2 busy cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from: the repository's own files (a copy, so the build's build/ and
# *.egg-info land in a temporary folder, not in the checkout).
SOURCES = ("pyproject.toml", "README.md", "nas", "search_spaces", "conf")
# The package folders of the repository and where they install inside the wheel.
PACKAGE_DIRS = {"nas": "nas", "search_spaces": "nas/search_spaces", "conf": "nas/conf"}


def run(cmd: list, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`cmd` with the environment of a user's shell: no PYTHONPATH into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NAS_DEBUG", "HYDRA_FULL_ERROR")}
    env["NAS_CACHE_DIR"] = str(cwd.parent / "cache")
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def checked(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"{p.args}: exit status {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built with pip from a copy of the repository's sources (no network, no isolation:
    this environment's setuptools)."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    checked(run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", root / "dist", src], root))
    (found,) = (root / "dist").glob("nas_rnn-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (its bin/ folder)."""
    root = tmp_path_factory.mktemp("venv")
    checked(run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root / "env"], root))
    python = root / "env" / "bin" / "python"
    # --force-reinstall: the editable install visible through the system site-packages has the same
    # version; pip leaves it alone (it is outside this environment) and installs the wheel here.
    checked(run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                 "--force-reinstall", wheel], root))
    return root / "env" / "bin"


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_the_wheel_ships_every_module_and_config_inside_nas(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert "nas" in tops and all(t == "nas" or t.endswith(".dist-info") for t in tops), tops
    expected = {f"{PACKAGE_DIRS[top]}/{p.relative_to(REPO / top).as_posix()}"
                for top in PACKAGE_DIRS for p in (REPO / top).rglob("*")
                if p.is_file() and p.suffix in (".py", ".yaml", ".txt") and "__pycache__" not in p.parts}
    assert expected - names == set()  # a module, a config or the corpus left out of the package
    assert {"nas/conf/train.yaml", "nas/conf/hydra/job_logging/nas.yaml", "nas/conf/hydra/help/train.yaml",
            "nas/search_spaces/__init__.py", "nas/corpora/tinyshakespeare.txt"} <= names


def test_the_installed_package_is_the_wheel_not_the_checkout(venv, empty):
    code = ("import nas, nas.conf, nas.search_spaces, nas.cli; print(nas.__file__); "
            "print(nas.conf.__file__); print(nas.search_spaces.__file__); print(nas.cli.CONF_DIR)")
    p = checked(run([venv / "python", "-c", code], empty))
    assert len(p.stdout.splitlines()) == 4, p.stdout
    for line in p.stdout.splitlines():
        assert Path(line).is_relative_to(venv.parent), p.stdout


@pytest.mark.parametrize("prog", ["nas-train", "nas-search", "nas-export"])
def test_help_from_an_empty_folder(venv, empty, prog):
    p = checked(run([venv / prog, "--help"], empty))
    assert p.stdout.startswith(f"{prog}: "), p.stdout[:200]
    assert ("controller:" in p.stdout) == (prog == "nas-search")  # its own config groups only
    assert list(empty.iterdir()) == []  # --help writes nothing


def test_a_5_step_nas_train_from_an_empty_folder(venv, empty):
    p = checked(run([venv / "nas-train", "trainer=tiny", "trainer.steps=5", "trainer.final_eval_chars=2000",
                     "trainer.sample_chars=20", "tracking.enabled=false"], empty))
    shown = json.loads(p.stdout[:p.stdout.rindex("}") + 1])
    assert shown["steps"] == 5 and 0 < shown["val_bpc"] < 10, shown
    (run_dir,) = (empty / "runs" / "train").iterdir()
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 5
    assert {"cell.json", "weights.pt", "nas-train.log"} <= {f.name for f in run_dir.iterdir()}
    assert "Traceback" not in p.stderr
