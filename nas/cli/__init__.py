"""Thin command-line entry points. Each composes a typed Hydra config from conf/ and calls the library.

Heavy imports (torch, optuna, mlflow) happen inside the check and task functions, after the config
is composed, so `--help` and config errors answer at once. Every setting is checked, and the run
folder Hydra is about to create is checked to be writable, before Hydra creates anything: a bad
setting or a read-only runs/ gives one line and leaves nothing on disk.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from nas.config import DataConfig, TrainConfig

# The configs ship inside the package (the repository's conf/ installs as nas.conf), so every command
# finds them the same way from a checkout and from an installed wheel, whatever the working folder.
CONF_MODULE = "nas.conf"
CONF_DIR = str(resources.files(CONF_MODULE))  # the same configs as a folder, for initialize_config_dir
HELP_FLAGS = {"--help", "-h"}


class Failure(Exception):
    """The work could not finish, for a reason that is not the user's input (a worker died): its
    message is a complete line; the command exits with status 1."""


# Exception types whose message is a complete, one-line explanation for the user: ValueError covers
# nas.cell's CellError, nas.data's DataError and nas.search's StudyError (imported by nobody here:
# describing an error must not cost a torch import).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)


def describe(e: BaseException) -> tuple[str, int]:
    """(one line for stderr without the program's name, exit status) for an exception."""
    text = str(e).strip()
    msg = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, Failure):
        return f"error: {msg}", 1
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        # A folder or file the command must use (read-only, no permission, a file in the way, full).
        also = f" -> {e.filename2}" if e.filename2 is not None else ""
        return f"error: cannot use {e.filename}{also}: {e.strerror}", 2
    if isinstance(e, USER_ERRORS):
        return f"error: {msg.strip(chr(39) + chr(34)) if isinstance(e, KeyError) else msg}", 2
    return f"internal error ({type(e).__name__}): {msg}", 1


def run_task(prog: str, task: Callable[[], None]) -> None:
    """Run `task`, turning failures into one line on stderr and a non-zero exit status (2: bad input
    or an unusable folder; 1: the work failed). Set NAS_DEBUG=1 to get the full traceback instead."""
    try:
        task()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if os.environ.get("NAS_DEBUG"):
            raise
        line, status = describe(e)
        print(f"{prog}: {line}", file=sys.stderr)
        if line.startswith("internal error"):
            print(f"{prog}: set NAS_DEBUG=1 for the full traceback", file=sys.stderr)
        sys.exit(status)


def hydra_cli(prog: str, config_name: str, schema: type, task: Callable[[Any], None],
              check: Callable[[Any], None] | None = None) -> Callable[[], None]:
    """The console-script entry point of a Hydra app: conf/<config_name>.yaml validated against
    `schema`, overrides checked first (one-line errors), then `check(app)` (the config as a `schema`
    object; raises a user error) and the writability of Hydra's run folder, all before Hydra creates
    that folder; then `task(app)` (the same `schema` object) under `run_task`. A multirun composes
    per job: `check` then runs in each job, before its task."""
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{config_name}_schema", node=schema)

    @hydra.main(config_path=f"pkg://{CONF_MODULE}", config_name=config_name, version_base="1.3")
    def _hydra_main(cfg: Any) -> None:
        def checked_task() -> None:
            app = to_app(cfg)
            if check is not None:
                check(app)
            task(app)

        run_task(prog, checked_task)

    def main() -> None:
        if HELP_FLAGS & set(sys.argv[1:]):
            try:
                print(render_help(prog, config_name, sys.argv[1:]), flush=True)
            except BrokenPipeError:  # `nas-search --help | head`: the reader has gone, not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        composed = check_overrides(prog, config_name, sys.argv[1:])
        if composed is not None:
            run_task(prog, lambda: before_hydra(composed, check))
        _hydra_main()

    return main


def to_app(cfg: Any) -> Any:
    """The composed config (without Hydra's node) as its schema's dataclass, interpolations resolved;
    a mandatory setting not given is a one-line ValueError."""
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    missing = _missing(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ValueError(f"{missing[0]}: missing, give it on the command line ({missing[0]}=...)")
    return OmegaConf.to_object(cfg)


def _missing(node: Any, prefix: str = "") -> list[str]:
    """The keys of a plain (unresolved) config whose value is OmegaConf's mandatory marker '???'."""
    if not isinstance(node, dict):
        return []
    out = []
    for key, value in node.items():
        out += [f"{prefix}{key}"] if value == "???" else _missing(value, f"{prefix}{key}.")
    return out


def before_hydra(composed: Any, check: Callable[[Any], None] | None) -> None:
    """Check the settings, then that Hydra's run folder can be created and written."""
    app = to_app(composed)
    if check is not None:
        check(app)
    check_writable(str(composed.hydra.run.dir))


def check_writable(folder: str | Path) -> None:
    """Raise a one-line ValueError naming `folder` when it cannot be created or written into (a
    read-only file system, no permission, a file in the way). Creates nothing."""
    path = Path(folder).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    what = "the folder" if existing == path else "its parent"
    if not existing.is_dir():
        raise ValueError(f"cannot create {path}: {what} {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        readonly = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "is on a read-only file system" if readonly else "is not writable by this user"
        raise ValueError(f"cannot write {path}: {what} {existing} {why}")


def check_overrides(prog: str, config_name: str, argv: list[str]) -> Any:
    """Compose the config once before Hydra does, so that a typo or a badly typed override gives one
    line (Hydra's own report spans several) and a non-zero exit. Returns the composed config (with
    its `hydra` node), or None when only Hydra can compose it (a multirun, a bare word)."""
    if {"-m", "--multirun"} & set(argv):
        return None  # sweep values (a=1,2) only compose per job: Hydra checks each one itself
    config_name, argv = _config_name(config_name, argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    if config_name is None or len(overrides) != len(argv):
        return None  # a bare word or a flag (--help, --cfg, ...): Hydra itself must interpret it
    return compose_or_exit(prog, config_name, overrides)


def compose_or_exit(prog: str, config_name: str, overrides: list[str]) -> Any:
    """The config `config_name` with `overrides` (and its `hydra` node), composed from the package's
    configs; a failure is the user's override: one line on stderr and exit status 2."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception as e:  # noqa: BLE001 - any composition failure is the user's override
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        cause = e.__cause__ or e.__context__
        if cause is not None and str(cause).strip():
            lines.append(str(cause).strip().splitlines()[0])
        detail = "; ".join(dict.fromkeys(ln for ln in lines if not ln.startswith(("full_key", "object_type",
                                                                              "reference_type"))))
        print(f"{prog}: error: bad configuration: {detail}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def _config_name(default: str, argv: list[str]) -> tuple[str | None, list[str]]:
    """The config a --config-name/-cn flag chooses (None: a flag that takes no name is given
    without one), and argv without it."""
    rest, name, i = [], default, 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in ("--config-name", "-cn"):
            if not eq and i + 1 >= len(argv):
                return None, argv
            name = value if eq else argv[i + 1]
            i += 1 if eq else 2
            continue
        rest.append(argv[i])
        i += 1
    return name, rest


def render_help(prog: str, config_name: str, argv: list[str]) -> str:
    """`prog --help`: the app's text (conf/hydra/help/<config_name>.yaml) with $APP_CONFIG_GROUPS, the
    config groups this app composes and their options, and $CONFIG, its settings (with the overrides
    in `argv` applied) filled in. Hydra's own help lists every group under conf/ (nas-train would
    show the search's controllers) and names the app after the module that calls it ("cli")."""
    import string

    from omegaconf import OmegaConf, open_dict

    name, rest = _config_name(config_name, argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    cfg = compose_or_exit(prog, name or config_name, [*overrides, f"hydra/help={config_name}"])
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items() if not g.startswith("hydra/")}
    settings = cfg.copy()
    with open_dict(settings):
        settings.pop("hydra")
    return string.Template(cfg.hydra.help.template).safe_substitute(
        APP_CONFIG_GROUPS=_indent(config_groups(choices) or "(none: every setting is given as key=value)"),
        CONFIG=_indent(OmegaConf.to_yaml(settings).rstrip()))


def config_groups(choices: dict[str, str | None]) -> str:
    """One line per config group: its options (the YAML files of conf/<group>/) and the chosen one."""
    lines, width = [], max(map(len, choices), default=0)
    for group, chosen in sorted(choices.items()):
        folder = resources.files(CONF_MODULE).joinpath(*group.split("/"))
        options = sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))
        lines.append(f"{group + ':':{width + 1}} {', '.join(options)}   (now: {chosen})")
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


class ConsoleHandler(logging.StreamHandler):
    """The console handler of every app's job log (conf/hydra/job_logging/nas.yaml): one line per
    record, written through tqdm so that a progress bar being drawn on the same terminal is cleared
    and redrawn below the line instead of being cut by it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


def check_trainer(trainer: TrainConfig, data: DataConfig | None = None) -> None:
    """The trainer's settings (and the corpus's, when given), as every CLI checks them before work:
    nas.train.check_config (TrainConfig's rules, `temperature` included) and DataConfig.check."""
    from nas.train import check_config

    check_config(trainer)
    if data is not None:
        data.check()


def check_study_exists(study: str, storage_url: str | None, study_dir: str | Path) -> None:
    """A journal study (no storage URL) must have its journal file: opening the storage would create
    an empty one, and its folder, for a mistyped name. A database is checked when opened."""
    journal = Path(study_dir) / "journal.log"
    if not storage_url and not journal.is_file():
        raise ValueError(f"no study named {study!r} in {journal}: start it with nas-search first")


def hide_password(text: str, uri: str | None) -> str:
    """`text` with the password of `uri` (scheme://user:password@host/...) replaced by ***, wherever
    it appears (as written, or percent-decoded)."""
    from urllib.parse import unquote, urlsplit

    try:
        secret = urlsplit(uri).password if uri else None
    except ValueError:
        secret = None
    for form in {secret, unquote(secret or "")} - {None, ""}:
        text = text.replace(form, "***")  # everywhere: a password shown in any context is a leak
    return text


def load_cell(ref: str):
    """nas.cell.known.load_cell (a reference cell name or a cell file), imported when first called:
    importing nas.cell loads torch, which `--help` and a bad setting must not wait for."""
    from nas.cell.known import load_cell as load

    return load(ref)
