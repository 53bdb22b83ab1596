"""Plugin loading shared by ops, search spaces and samplers: installed entry points and dotted paths.

Every error is a one-line ValueError that names the setting or the plugin, the kind of user error the
command-line tools print without a traceback."""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Any

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of `group` (importlib.metadata), by name."""
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)


def load_entry_point(ep: metadata.EntryPoint, group: str) -> Any:
    """`ep.load()`, with a one-line ValueError (the CLIs' kind of user error) naming the plugin when
    it cannot be loaded."""
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001 - any error of the plugin's import: name the plugin
        raise ValueError(f"plugin {ep.name} = {ep.value} (entry point group {group}): cannot load it: "
                          f"{type(e).__name__}: {e}") from None


def import_object(path: str, key: str) -> Any:
    """The object at the dotted `path`: a module (`my_pkg.my_module`) or an attribute of one
    (`my_pkg.my_module.attr` or `my_pkg.my_module:attr`). A one-line ValueError that starts with
    `key` (the setting that gave the path) when it cannot be imported or has no such attribute."""
    if not isinstance(path, str) or not _DOTTED.fullmatch(path):
        raise ValueError(f"{key}: expected a dotted path such as my_pkg.my_module or "
                         f"my_pkg.my_module.attr, got {path!r}")
    module_path, _, attr = path.partition(":")
    if not attr:
        try:
            return importlib.import_module(module_path)
        except ModuleNotFoundError as e:
            if e.name != module_path or "." not in module_path:
                raise ValueError(f"{key}: cannot import {path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed on import: one line
            raise ValueError(f"{key}: cannot import {path}: {type(e).__name__}: {e}") from None
        module_path, attr = module_path.rsplit(".", 1)
    try:
        obj = importlib.import_module(module_path)
    except Exception as e:  # noqa: BLE001 - as above
        what = str(e) if isinstance(e, ModuleNotFoundError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{key}: cannot import {path}: {what}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{key}: cannot import {path}: {module_path} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
