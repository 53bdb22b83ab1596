"""Thin command-line entry points. Each composes a typed Hydra config from conf/ and calls the library.

Heavy imports (torch, optuna, mlflow) happen inside the task functions, after the config is
composed, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is a complete, one-line explanation for the user."""
    from nas.cell.spec import CellError
    from nas.data import DataError

    return (CellError, DataError, ValueError, FileNotFoundError, KeyError)


def run_task(prog: str, task: Callable[[], None]) -> None:
    """Run `task`, turning failures into one line on stderr and a non-zero exit status.

    Set NAS_DEBUG=1 to get the full traceback instead."""
    try:
        task()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if os.environ.get("NAS_DEBUG"):
            raise
        known = isinstance(e, user_errors())
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            msg = msg.strip("'\"")
        kind = "error" if known else f"internal error ({type(e).__name__})"
        print(f"{prog}: {kind}: {msg}", file=sys.stderr)
        if not known:
            print(f"{prog}: set NAS_DEBUG=1 for the full traceback", file=sys.stderr)
        sys.exit(2 if known else 1)


def hydra_cli(prog: str, config_name: str, schema: type, task: Callable[[Any], None]) -> Callable[[], None]:
    """The console-script entry point of a Hydra app: conf/<config_name>.yaml validated against
    `schema`, overrides checked first (one-line errors), `task(cfg)` run under `run_task`."""
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{config_name}_schema", node=schema)

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    def _hydra_main(cfg: Any) -> None:
        run_task(prog, lambda: task(cfg))

    def main() -> None:
        check_overrides(prog, config_name, sys.argv[1:])
        _hydra_main()

    return main


def check_overrides(prog: str, config_name: str, argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that a typo or a badly typed override gives one
    line (Hydra's own report spans several) and a non-zero exit."""
    if {"-m", "--multirun"} & set(argv):
        return  # sweep values (a=1,2) only compose per job: Hydra checks each one itself
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    if len(overrides) != len([a for a in argv if not a.startswith("-")]):
        return  # something Hydra itself must interpret (a bare word): let it answer
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            compose(config_name, overrides=overrides, return_hydra_config=True)
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


def load_cell(ref: str):
    """A reference cell by name (lstm, gru, ...) or a cell JSON file by path."""
    from nas.cell import KNOWN_CELLS, CellSpec, known_cell

    if ref in KNOWN_CELLS:
        return known_cell(ref)
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"cell file {ref!r} does not exist")
        return CellSpec.from_json(path.read_text())
    raise ValueError(f"unknown cell {ref!r}: not a reference cell ({', '.join(KNOWN_CELLS)}) "
                     "nor a cell JSON file")
