"""Reading corpus files: which file holds each split, their content hash, and the symbols of a text in
each format (module docstring of nas.data), mapped to ids through a vocabulary. nas.data caches and
serves what this reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
_CHUNK = 1 << 22  # symbols per vectorised step when encoding

# Folder layouts, most specific first: the real PTB folder also holds the word-level
# ptb.train.txt, so a generic "contains 'train'" match alone would be ambiguous there.
_NAMED_LAYOUTS = (
    {"train": ("train.txt",), "val": ("valid.txt", "val.txt"), "test": ("test.txt",)},
    {
        "train": ("ptb.char.train.txt",),
        "val": ("ptb.char.valid.txt",),
        "test": ("ptb.char.test.txt",),
    },
)


class DataError(ValueError):
    """A corpus that cannot be used; the message names the path and the problem."""


def resolve_format(path: Path, files: dict[str, Path] | Path, format: str) -> str:
    if format != "auto":
        return format
    if isinstance(files, Path):
        return "bytes" if path.name == "enwik8" else "chars"
    ptb = all(files[s].name == n[0] for s, n in _NAMED_LAYOUTS[1].items())
    return "spaced" if ptb else "chars"


def split_files(path: Path) -> dict[str, Path] | Path:
    """The file to split 90/5/5, or the folder's file for each split."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    names = sorted(
        p.name for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    for layout in _NAMED_LAYOUTS:
        found = {s: [n for n in layout[s] if n in names] for s in SPLITS}
        if all(found.values()):
            if len(found["val"]) > 1:
                raise DataError(f"{path}: ambiguous val split, files {found['val']}")
            return {s: path / found[s][0] for s in SPLITS}
    return _match_split_names(path, names)


def _match_split_names(path: Path, names: list[str]) -> dict[str, Path]:
    """The one file whose name contains each split's name ("val" also matches "valid")."""
    chosen = {}
    for split in SPLITS:
        matches = [n for n in names if split in n.lower()]
        if not matches:
            problem = f"no file name contains {split!r}"
            raise DataError(f"{path}: folder is missing a {split} split ({problem})")
        if len(matches) > 1:
            raise DataError(f"{path}: ambiguous {split} split, files {matches}")
        chosen[split] = matches[0]
    if len(set(chosen.values())) < len(SPLITS):
        raise DataError(f"{path}: one file matches several splits: {chosen}")
    return {s: path / n for s, n in chosen.items()}


def combined_hash(files: dict[str, Path] | Path) -> str:
    if isinstance(files, Path):
        return _sha256(files)
    return hashlib.sha256(
        "".join(f"{s}:{_sha256(files[s])}\n" for s in SPLITS).encode()
    ).hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data:
        raise DataError(f"{path}: file is empty")
    return data


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def _filecodepoints(path: Path, fmt: str) -> np.ndarray:
    """One integer per symbol of the file: byte values, or Unicode code points."""
    data = read_bytes(path)
    if fmt == "bytes" or (fmt == "chars" and data.isascii()):
        return np.frombuffer(data, dtype=np.uint8)  # ASCII is UTF-8 with one byte a character
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start}") from None
    return codepoints(_unspace(text, path) if fmt == "spaced" else text)


def _unspace(text: str, path: Path) -> str:
    """A spaced-character text as its symbols: each line's characters without the separator
    whitespace, then "\n" as the line's end-of-line symbol (a last line without a newline gets
    one too, as in AWD-LSTM's loader)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out = []
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        joined = "".join(tokens)
        if len(joined) != len(tokens):
            token = next(t for t in tokens if len(t) > 1)
            raise DataError(f"{path}: line {number}: spaced format expects single characters "
                            f"separated by spaces, got the token {token!r}")
        out.append(joined)
    return "\n".join(out) + "\n"


def id_dtype(n_ids: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16):
        if n_ids <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def present(cps: np.ndarray) -> np.ndarray:
    """Sorted distinct values of `cps`."""
    seen = np.zeros(int(cps.max(initial=0)) + 1, dtype=bool)
    for i in range(0, len(cps), _CHUNK):
        seen[cps[i : i + _CHUNK]] = True
    return np.flatnonzero(seen)


def lookup(
    cps: np.ndarray, keys: np.ndarray, dtype: np.dtype, out: np.ndarray | None = None
) -> np.ndarray:
    """Map code points to 1 + their index in sorted `keys`, or to 0 when absent.

    A dense table over code points (at most 0x110000 entries) makes this a vectorised
    gather, linear in the text length; chunks bound the int64 index copies numpy makes.
    """
    size = max(int(cps.max(initial=0)), int(keys.max(initial=0))) + 1
    table = np.zeros(size, dtype=dtype)
    table[keys] = np.arange(1, len(keys) + 1)
    out = np.empty(len(cps), dtype=dtype) if out is None else out
    for i in range(0, len(cps), _CHUNK):
        out[i : i + _CHUNK] = table[cps[i : i + _CHUNK]]
    return out


def read_splits(files: dict[str, Path] | Path, fmt: str) -> dict[str, np.ndarray]:
    """Code points of each split; a single file is cut contiguously 90/5/5.

    For the 100,000,000-byte enwik8 file the 90/5/5 cut by bytes is exactly the
    customary 90M/5M/5M split.
    """
    if isinstance(files, dict):
        return {s: _filecodepoints(files[s], fmt) for s in SPLITS}
    cps = _filecodepoints(files, fmt)
    n = len(cps)
    return dict(zip(SPLITS, np.split(cps, [n * 90 // 100, n * 95 // 100])))
