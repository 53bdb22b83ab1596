"""Which code produced a number: the project's version and commit and the versions of the libraries
that change results. Recorded with each study (user attr `nas:versions`), each trial and each MLflow run.

    versions() -> {"nas_rnn": "0.1.0", "git_commit": "3f2a...", "git_dirty": "false",
                   "python": "3.11.7", "torch": "2.13.0+cpu", "optuna": "5.1.0", "mlflow": "3.17.2"}

Nothing heavy is imported (versions come from the installed distributions' metadata), and git is asked
only when the package runs from a git checkout; an installed copy says "unknown" for the commit.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_LIBRARIES = {"nas_rnn": "nas-rnn", "torch": "torch", "optuna": "optuna", "mlflow": "mlflow-skinny"}


@functools.cache
def versions() -> dict[str, str]:
    """The versions that identify a result (strings, so they can be tags and params as they are)."""
    out = {key: _distribution_version(dist) for key, dist in _LIBRARIES.items()}
    out["python"] = platform.python_version()
    out.update(_git(Path(__file__).resolve().parent.parent))
    return out


def short() -> str:
    """One token for logs and trial attributes: 'nas-rnn 0.1.0 @ 3f2a1c9d0e12+dirty'."""
    v = versions()
    commit = v["git_commit"][:12] + ("+dirty" if v["git_dirty"] == "true" else "")
    return f"nas-rnn {v['nas_rnn']} @ {commit}"


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(root: Path) -> dict[str, str]:
    """The checkout's commit and whether tracked files differ from it; "unknown" outside a checkout
    (an installed wheel) or without git."""
    unknown = {"git_commit": "unknown", "git_dirty": "unknown"}
    if not (root / ".git").exists():
        return unknown
    try:
        commit = _run(["git", "rev-parse", "HEAD"], root)
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], root)
    except (OSError, subprocess.SubprocessError):
        return unknown
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false"}


def _run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()
