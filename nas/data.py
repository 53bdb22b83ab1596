"""Corpora for the character-level language-model evaluator.

A corpus is read once, encoded to a compact integer array and cached under a
content hash, so that many worker processes can memory-map the same encoding
instead of each decoding 100 MB of text. Batching follows the usual char-RNN /
truncated-BPTT layout: B parallel contiguous streams, consumed in time-major
chunks of `seq_len` steps.

Formats (how a text becomes symbols, `FORMATS`): `chars`, one symbol per Unicode
character; `bytes`, one per byte (enwik8); `spaced`, characters separated by spaces,
one sentence a line (PTB's ptb.char.*.txt): each non-space character is a symbol, every
line ends with one end-of-line symbol (spelled "\n"), and the separator spaces are not
symbols. This is the published char-PTB protocol (e.g. AWD-LSTM's loader: the tokens of
a line are line.split() + ['<eos>']); reading PTB's files as chars would make half of
all symbols near-free spaces and halve every bpc.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from nas.corpus_files import (
    SPLITS,
    DataError,
    codepoints,
    combined_hash,
    id_dtype,
    lookup,
    present,
    read_splits,
    resolve_format,
    split_files,
)

__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_CORPUS", "FORMATS", "SPLITS", "UNK", "Corpus", "DataError", "batchify",
           "default_corpus_path", "iterate_chunks", "load_corpus", "unigram_entropy_bits"]

# Bump when the cached encoding changes meaning, so stale caches are ignored.
FORMAT_VERSION = 1
UNK = "<unk>"
DEFAULT_CORPUS = "tinyshakespeare.txt"
DEFAULT_CACHE_DIR = "runs/cache"
FORMATS = ("auto", "chars", "bytes", "spaced")

# eq=False: comparing arrays element-wise has no single truth value.
@dataclass(frozen=True, eq=False)
class Corpus:
    """An encoded corpus.

    `symbols[i]` is the symbol with id i; id 0 is `"<unk>"`, the rest are the train
    split's symbols sorted by code point. Byte-level corpora (enwik8) spell byte b as
    `chr(b)`, so `decode(ids).encode("latin-1")` gives the bytes back. `train`, `val`
    and `test` are read-only integer arrays (memory-mapped from the cache).
    `unknown` maps "val" and "test" to how many positions of that split hold a symbol
    unseen in train (occurrences, not distinct symbols); it is a read-only mapping.
    A pickled Corpus carries its arrays in memory: send workers the path instead.
    `source_hash` is the sha256 of the file bytes (for a folder: of its three files'
    hashes).
    """

    name: str
    symbols: tuple[str, ...]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unknown: Mapping[str, int]
    source_hash: str
    format: str = "chars"  # how the text was read: chars, bytes or spaced (FORMATS)

    def __post_init__(self):
        # Freeze the counts too; any mapping given is copied.
        object.__setattr__(self, "unknown", MappingProxyType(dict(self.unknown)))

    def __reduce__(self):
        # A mappingproxy cannot be pickled; rebuild from a plain dict.
        values = (self.name, self.symbols, self.train, self.val, self.test)
        return Corpus, (*values, dict(self.unknown), self.source_hash, self.format)

    @property
    def vocab_size(self) -> int:
        """Number of ids, including the unknown symbol."""
        return len(self.symbols)

    @cached_property
    def _codepoints(self) -> np.ndarray:
        return np.array([ord(s) for s in self.symbols[1:]], dtype=np.int64)

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of `text`; characters outside the vocabulary map to 0."""
        return lookup(codepoints(text), self._codepoints, self.train.dtype)

    def decode(self, ids) -> str:
        """The text of `ids`; id 0 decodes to `"<unk>"`."""
        return "".join(self.symbols[i] for i in np.asarray(ids).ravel().tolist())

    def split(self, name: str) -> np.ndarray:
        """The array of split `name`, one of "train", "val", "test"."""
        if name not in SPLITS:
            raise ValueError(f"Corpus.split: expected one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def load_corpus(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    format: str = "auto",
) -> Corpus:
    """Load a corpus, encoding it on first use and memory-mapping the cached encoding after.

    `path` is a text file (split contiguously 90/5/5 by symbols) or a folder holding one
    train, one validation and one test file; None loads the packaged Tiny Shakespeare.
    `format` is one of FORMATS (module docstring); `auto` reads a file named `enwik8` as
    bytes (90M/5M/5M for the standard file), a folder of ptb.char.{train,valid,test}.txt
    as spaced, anything else as UTF-8 chars. The cache lives in `cache_dir`, else
    `$NAS_CACHE_DIR`, else `runs/cache`, keyed by content and format. Raises DataError for
    missing, empty, undecodable or incomplete input, or a spaced file with a multi-character
    token; ValueError for an unknown format.
    """
    if format not in FORMATS:
        raise ValueError(f"data.format: expected one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path) if path is not None else default_corpus_path()
    files = split_files(path)
    fmt = resolve_format(path, files, format)
    source_hash = combined_hash(files)
    cache = Path(cache_dir or os.environ.get("NAS_CACHE_DIR") or DEFAULT_CACHE_DIR)
    key = f"v{FORMAT_VERSION}|format={fmt}|{source_hash}"
    stem = cache / hashlib.sha256(key.encode()).hexdigest()
    if not stem.with_suffix(".json").exists():
        _write_cache(stem, files, fmt, source_hash)
    return _read_cache(stem, name=path.stem if path.is_file() else path.name, fmt=fmt)


def default_corpus_path() -> Path:
    """Path of the packaged Tiny Shakespeare text."""
    try:
        return Path(str(resources.files("nas.corpora") / DEFAULT_CORPUS))
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).parent / "corpora" / DEFAULT_CORPUS


def _write_cache(
    stem: Path, files: dict[str, Path] | Path, fmt: str, source_hash: str
) -> None:
    """Encode the corpus into one id array (train, val, test back to back) plus a JSON record."""
    parts = read_splits(files, fmt)
    keys = present(parts["train"])
    dtype = id_dtype(len(keys) + 1)
    sizes = [len(parts[s]) for s in SPLITS]
    ids = np.empty(sum(sizes), dtype=dtype)
    views = dict(zip(SPLITS, np.split(ids, np.cumsum(sizes)[:-1])))
    for s in SPLITS:
        lookup(parts[s], keys, dtype, out=views[s])
    meta = {
        "format": FORMAT_VERSION,
        "symbols": [UNK] + [chr(k) for k in keys],
        "sizes": sizes,
        "unknown": {s: int(np.count_nonzero(views[s] == 0)) for s in ("val", "test")},
        "source_hash": source_hash,
        "text_format": fmt,
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    # The .json is written last: its presence marks a complete entry for other processes.
    _atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, ids))
    record = json.dumps(meta).encode()
    _atomic_write(stem.with_suffix(".json"), lambda f: f.write(record))


def _atomic_write(target: Path, write) -> None:
    """Write via a temp file and os.replace, so concurrent readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(stem: Path, name: str, fmt: str) -> Corpus:
    meta = json.loads(stem.with_suffix(".json").read_text())
    ids = np.load(stem.with_suffix(".npy"), mmap_mode="r")
    bounds = np.cumsum(meta["sizes"])[:-1]
    train, val, test = np.split(ids, bounds)
    return Corpus(
        name=name,
        symbols=tuple(meta["symbols"]),
        train=train,
        val=val,
        test=test,
        unknown=MappingProxyType(meta["unknown"]),
        source_hash=meta["source_hash"],
        format=fmt,
    )


def batchify(
    ids: np.ndarray, batch_size: int, seq_len: int, *, name: str = "split", offset: int = 0
) -> torch.Tensor:
    """Cut a split into `batch_size` equal contiguous streams, dropping the remainder.

    Returns a (B, N) int64 tensor whose row b is `ids[b*N:(b+1)*N]`, N = len(ids) // B,
    of the split rotated left by `offset` (mod its length) first: `offset` moves where
    the streams start (and which remainder is dropped); the split's end then joins its
    beginning.
    Raises DataError when the split has fewer than B * (seq_len + 1) symbols, the least
    that gives every stream one full chunk of inputs plus its shifted targets; `name`
    labels the split in that message.
    """
    if batch_size < 1 or seq_len < 1:
        got = f"batch_size={batch_size}, seq_len={seq_len}"
        raise ValueError(f"batchify: expected positive sizes, got {got}")
    needed = batch_size * (seq_len + 1)
    if len(ids) < needed:
        raise DataError(
            f"{name}: corpus too small: batch_size={batch_size} x (seq_len={seq_len} + 1) "
            f"needs {needed} characters, it has {len(ids)}"
        )
    n = len(ids) // batch_size
    offset %= len(ids)
    if offset:
        ids = np.concatenate([ids[offset:], ids[:offset]])
    # A copy: torch wants int64, and memory-mapped splits are read-only.
    streams = np.asarray(ids[: batch_size * n], dtype=np.int64)
    return torch.from_numpy(streams).view(batch_size, n)


def iterate_chunks(
    streams: torch.Tensor, seq_len: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield time-major (inputs, targets) chunks of shape (T, B) over (B, N) `streams`.

    Inputs cover time steps start .. N-2 in chunks of `seq_len` (the last may be
    shorter); targets are the same steps shifted by one. `start` is the time step to
    resume from, e.g. k * seq_len after k chunks.
    """
    n = streams.shape[1]
    for i in range(start, n - 1, seq_len):
        t = min(seq_len, n - 1 - i)
        yield (
            streams[:, i : i + t].t().contiguous(),
            streams[:, i + 1 : i + 1 + t].t().contiguous(),
        )


def unigram_entropy_bits(ids) -> float:
    """Entropy in bits per symbol of the empirical unigram distribution of `ids`."""
    counts = np.bincount(np.asarray(ids).ravel())
    if counts.sum() == 0:
        raise ValueError("unigram_entropy_bits: expected a non-empty array")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
