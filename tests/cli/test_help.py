"""What a user reads of each command: its --help (what it does, its main options with examples, its
own config groups only), its log (the project's INFO lines on stderr and in <run dir>/<command>.log,
on a terminal or not) and where a sweep (-m) goes (under runs/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import resources

import pytest
from omegaconf import OmegaConf

import nas.cli.export
import nas.cli.report
import nas.cli.search
import nas.cli.train
import nas.cli.worker  # noqa: F401 - each CLI module stores its config schema in Hydra's ConfigStore
from nas.cli import CONF_MODULE, compose_or_exit, render_help

# command -> (its config, the config groups it composes)
APPS = {
    "nas-train": ("train", {"data", "trainer"}),
    "nas-search": ("search", {"controller", "data", "pruner", "search_space", "trainer"}),
    "nas-worker": ("worker", set()),
    "nas-report": ("report", set()),
    "nas-export": ("export", set()),
}
ALL_GROUPS = {"controller", "data", "pruner", "search_space", "trainer"}


def section(text: str, title: str) -> str:
    """The lines after the line starting with `title`, up to the next blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("prog", APPS)
def test_help_says_what_the_command_does_with_options_and_examples(prog):
    text = render_help(prog, APPS[prog][0], ["--help"])
    first = text.splitlines()[0]
    assert first.startswith(f"{prog}: ") and len(first) > 40, first
    assert "powered by Hydra" not in text and "$APP_CONFIG_GROUPS" not in text and "$CONFIG" not in text
    assert f"Usage: {prog}" in text
    assert len(section(text, "Main options").splitlines()) >= 3
    examples = section(text, "Examples").splitlines()
    assert len(examples) >= 2 and all(line.lstrip().startswith(prog) for line in examples), examples


@pytest.mark.parametrize("prog", APPS)
def test_help_lists_only_the_commands_own_config_groups_with_their_options(prog):
    config, groups = APPS[prog]
    listed = section(render_help(prog, config, ["--help"]), "Config groups").splitlines()
    entries = [line for line in listed if not line.strip().startswith("(")]
    assert {line.split(":")[0].strip() for line in entries} == groups, listed
    for line in entries:
        if ":" in line:
            group, options = line.split(":", 1)
            files = {f.name.removesuffix(".yaml") for f in resources.files(CONF_MODULE).joinpath(group.strip())
                     .iterdir() if f.name.endswith(".yaml")}
            assert options.split("(now:")[0].strip().split(", ") == sorted(files), line
    if not groups:
        assert not ALL_GROUPS & {w.strip(":,") for w in " ".join(listed).split()}


@pytest.mark.parametrize("prog", APPS)
def test_every_key_the_help_names_is_a_setting_or_a_group(prog):
    """Help text and configs cannot drift apart: each key=... of its options and examples exists."""
    config, groups = APPS[prog]
    text = render_help(prog, config, ["--help"])
    cfg = compose_or_exit(prog, config, [])
    named = re.findall(r"(?<![\w.-])([a-z_][a-z_.]*[a-z_])=", section(text, "Main options") + "\n"
                       + section(text, "Examples"))
    assert named
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in named:
        node = plain
        for part in key.split("."):
            assert isinstance(node, dict) and (part in node or key in groups), (prog, key)
            node = node.get(part)


def test_help_shows_the_settings_with_the_overrides_given():
    text = render_help("nas-search", "search", ["controller=tpe", "n_trials=7", "--help"])
    assert "(now: tpe)" in section(text, "Config groups")
    assert "\n  n_trials: 7\n" in text
    text = render_help("nas-search", "search", ["--config-name", "search_gpu", "-h"])
    assert "(now: gpu)" in section(text, "Config groups") and "\n  n_trials: 500\n" in text


def test_help_with_a_mistyped_override_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        render_help("nas-train", "train", ["trainer.stepz=3", "--help"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nas-train: error: bad configuration") and "stepz" in err[0]


@pytest.mark.parametrize("prog", [*APPS, "nas-dashboard"])
def test_the_console_script_help_exits_0_and_writes_nothing(prog, tmp_path):
    exe = shutil.which(prog)
    assert exe, f"{prog} is not installed"
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith(f"{prog}: ") or p.stdout.startswith(f"usage: {prog}"), p.stdout[:200]
    assert "xamples" in p.stdout
    assert list(tmp_path.iterdir()) == []


# The job log: a Hydra app of nas.cli (nas-train's config) whose task logs as the library does.
APP = """
import logging, sys
from nas.cli import hydra_cli
from nas.config import TrainApp

def task(cfg):
    logging.getLogger("nas.search").info("trial 3 finished, seed %d", cfg.seed)
    logging.getLogger("nas.train").debug("a debug line")
    logging.getLogger("some.library").info("a library's info line")
    logging.getLogger("some.library").warning("a library's warning")
    print("the result")

hydra_cli("nas-train", "train", TrainApp, task)()
"""


def run_app(args: list[str], cwd, tty: bool = False) -> tuple[int, str, str]:
    """(status, stdout, stderr) of APP; with `tty`, stdout and stderr are one pseudo-terminal."""
    cmd = [sys.executable, "-c", APP, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("NAS_DEBUG", "HYDRA_FULL_ERROR")}
    if not tty:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
        return p.returncode, p.stdout, p.stderr
    leader, follower = os.openpty()
    with subprocess.Popen(cmd, stdout=follower, stderr=follower, cwd=cwd, env=env) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the app closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
    return proc.returncode, b"".join(chunks).decode(), ""


@pytest.mark.parametrize("tty", [False, True], ids=["redirected", "terminal"])
def test_the_projects_info_lines_reach_the_console_and_the_job_log(tmp_path, tty):
    status, out, err = run_app(["seed=4", "hydra.run.dir=runs/x"], tmp_path, tty)
    assert status == 0, out + err
    console = err if not tty else out
    assert re.search(r"\]\[nas\.search\]\[INFO\] - trial 3 finished, seed 4\r?\n", console), console
    assert "a library's warning" in console
    assert "a debug line" not in console and "a library's info line" not in console
    if not tty:
        assert out == "the result\n"  # stdout keeps the result only
    assert sorted(p.name for p in (tmp_path / "runs" / "x").iterdir()) == [".hydra", "nas-train.log"]
    log = (tmp_path / "runs" / "x" / "nas-train.log").read_text()
    assert "[nas.search][INFO] - trial 3 finished, seed 4" in log and "a library's warning" in log
    assert "a debug line" not in log and "a library's info line" not in log


def test_a_sweep_goes_under_runs_with_a_log_per_job(tmp_path):
    status, out, err = run_app(["-m", "seed=1,2"], tmp_path)
    assert status == 0, out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    (sweep,) = (tmp_path / "runs" / "multirun" / "nas-train").iterdir()
    for job, seed in (("0", 1), ("1", 2)):
        assert f"trial 3 finished, seed {seed}" in (sweep / job / "nas-train.log").read_text()


@pytest.mark.parametrize("prog", APPS)
def test_every_command_logs_to_its_own_file_and_sweeps_under_runs(prog):
    cfg = compose_or_exit(prog, APPS[prog][0], [])
    assert cfg.hydra.job.name == prog
    assert cfg.hydra.runtime.choices["hydra/job_logging"] == "nas"
    logging = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert logging["handlers"]["file"]["filename"] == "${hydra.runtime.output_dir}/${hydra.job.name}.log"
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False) == {
        "dir": "runs/multirun/${hydra.job.name}/${now:%Y-%m-%d_%H-%M-%S}", "subdir": "${hydra.job.num}"}
