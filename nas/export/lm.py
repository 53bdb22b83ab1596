"""The trained character model of an export: where a training saved it, the files that use it in plain
torch, and how fast the plain-torch cell runs against torch.nn.LSTM.

Every training saves the whole model in its run folder (nas.train.save_run): weights.pt (the CharLM
state dict: embedding, cell, decoder), result.json (scores, the training config, the corpus's name,
hash and format) and, where save_run writes it, vocab.json (nas.lm.save_vocab). A run folder without
vocab.json gets its vocabulary from the corpus it was trained on, found through the run's data config
(a study's config, or a nas-train run's .hydra/config.yaml) and checked against the recorded hash.

    find_trained_lm(run_dir, data, cell_hash) -> TrainedLM, or a str saying why there is none
    trial_lm(study, number)                    -> the same for a search trial
    write_lm(out, name, rnn, lm)               -> model.pt, model.json, charlm.py, sample.py, evaluate.py
    measure_speed(module_file, rnn, sizes)     -> the plain-torch layer against torch.nn.LSTM
"""

from __future__ import annotations

import importlib.util
import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.export.lm_templates import CHARLM, EVALUATE, SAMPLE

LM_FILES = ("model.pt", "model.json", "charlm.py", "sample.py", "evaluate.py")
_LM_KEYS = ("embedding.weight", "decoder.weight", "decoder.bias")


@dataclass(frozen=True)
class TrainedLM:
    """A trained CharLM as a run folder saved it: its state dict, vocabulary and result.json."""

    run_dir: Path
    state_dict: dict[str, torch.Tensor]
    symbols: tuple[str, ...]
    text_format: str
    result: dict[str, Any]

    def rnn_weights(self) -> dict[str, torch.Tensor]:
        """The CellRNN part (`rnn.*`), prefix removed: what weights.pt of an export holds."""
        return {k[len("rnn."):]: v for k, v in self.state_dict.items() if k.startswith("rnn.")}

    def sizes(self) -> dict[str, Any]:
        vocab, emb = self.state_dict["embedding.weight"].shape
        hidden = self.state_dict["decoder.weight"].shape[1]
        config = self.result.get("config", {})
        layers = 1 + max(int(k.split(".")[2]) for k in self.state_dict if k.startswith("rnn.layers."))
        return {"vocab_size": vocab, "embedding_size": emb, "hidden_size": hidden, "num_layers": layers,
                "dropout": float(config.get("dropout", 0.0)),
                "tied": bool(config.get("tie_weights", True)) and emb == hidden}

    def protocol(self) -> dict[str, Any]:
        """How the reported scores were made (nas.lm.split_bpc's settings)."""
        c = self.result.get("config", {})
        return {"segment": c.get("state_span", 2048), "burn_in": c.get("eval_burn_in", 0),
                "max_chars": c.get("final_eval_chars"), "batch_size": c.get("eval_batch_size", 16)}


def find_trained_lm(run_dir: str | Path, data: Mapping[str, Any] | None = None,
                    cell_hash: str | None = None) -> TrainedLM | str:
    """The trained model saved in `run_dir`, or one line saying why there is none. `data`: the run's
    data config ({path, cache_dir, format}; default: the folder's .hydra/config.yaml), used only when
    the folder has no vocab.json. With `cell_hash`, the run must have trained that cell."""
    run = Path(run_dir)
    if not (run / "weights.pt").is_file() or not (run / "result.json").is_file():
        return f"no trained model saved in {run} (weights.pt and result.json expected)"
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    divergence = result.get("divergence", result.get("diverged"))  # "diverged": runs saved before 0.2
    if divergence:
        return f"the run in {run} diverged ({divergence}): its weights are no model"
    if cell_hash is not None and result.get("cell_hash") != cell_hash:
        return f"the run in {run} trained cell {result.get('cell_hash')}, not {cell_hash}"
    state = torch.load(run / "weights.pt", map_location="cpu", weights_only=True)
    if not all(k in state for k in _LM_KEYS) or not any(k.startswith("rnn.layers.") for k in state):
        return f"{run / 'weights.pt'} is not a character model's state dict (expected {', '.join(_LM_KEYS)})"
    found = _vocabulary(run, result, data)
    if isinstance(found, str):
        return found
    symbols, text_format = found
    if len(symbols) != state["embedding.weight"].shape[0]:
        return (f"the vocabulary of {run} has {len(symbols)} symbols, the model "
                f"{state['embedding.weight'].shape[0]}")
    return TrainedLM(run, {k: v.detach().cpu() for k, v in state.items()}, tuple(symbols), text_format, result)


def _vocabulary(run: Path, result: dict, data: Mapping[str, Any] | None) -> tuple[tuple, str] | str:
    """(symbols, text format) from vocab.json, else from the corpus the run's data config names."""
    from nas.data import DataError, load_corpus
    from nas.lm import VOCAB_FILE, load_vocab

    if (run / VOCAB_FILE).is_file():
        return load_vocab(run / VOCAB_FILE)
    if data is None and (run / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml")).get("data")
    corpus_name = result.get("corpus", "?")
    if not data:
        return f"the vocabulary of {run} is unknown (no {VOCAB_FILE}, no data config of the run)"
    try:
        corpus = load_corpus(data.get("path"), data.get("cache_dir"), data.get("format") or "auto")
    except (DataError, OSError, ValueError) as e:
        return f"the vocabulary of {run} is unknown (no {VOCAB_FILE}; its corpus {corpus_name!r}: {e})"
    if corpus.source_hash != result.get("corpus_hash") or corpus.format != result.get("corpus_format"):
        return (f"the vocabulary of {run} is unknown (no {VOCAB_FILE}; the corpus at "
                f"{data.get('path') or 'the packaged default'} is not the one it was trained on)")
    return corpus.symbols, corpus.format


def trial_lm(study, number: int) -> TrainedLM | str:
    """The trained model of trial `number` of a study (of the trial it duplicates), or why there is none."""
    from nas.trials import TrialRecord, stored_config

    trials = study.get_trials(deepcopy=False)
    record = TrialRecord.of(trials[number])
    if record.duplicate_of is not None:
        record = TrialRecord.of(trials[record.duplicate_of])
    if not record.run_dir:
        return f"trial {record.number} saved no run folder"
    data = (stored_config(study) or {}).get("data")
    return find_trained_lm(record.run_dir, data, record.cell_hash)


def write_lm(out: Path, name: str, rnn: str, lm: TrainedLM) -> dict[str, Any]:
    """Write the trained model's files into `out` (names already checked); returns model.json's content."""
    meta = {"module": name, "rnn_class": rnn, "sizes": lm.sizes(), "text_format": lm.text_format,
            "protocol": lm.protocol(), "reported": reported(lm), "vocabulary": list(lm.symbols)}
    torch.save({k: v.clone() for k, v in lm.state_dict.items()}, out / "model.pt")
    (out / "model.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "charlm.py").write_text(CHARLM.substitute(name=name, RNN=rnn, imports=_imports(name, rnn)),
                                   encoding="utf-8")
    (out / "sample.py").write_text(SAMPLE, encoding="utf-8")
    (out / "evaluate.py").write_text(EVALUATE, encoding="utf-8")
    return meta


def _imports(name: str, rnn: str) -> str:
    """charlm.py's third-party imports in isort's order (`import` lines, then `from` lines by module)."""
    froms = sorted([("torch", "from torch import Tensor, nn"), (name, f"from {name} import {rnn}")],
                   key=lambda m: m[0].lower())
    return "\n".join(["import torch", *(line for _, line in froms)])


def reported(lm: TrainedLM) -> dict[str, Any]:
    """The scores the run reported and what they were made on."""
    r, c = lm.result, lm.result.get("config", {})
    return {"val_bpc": r.get("val_bpc"), "test_bpc": r.get("test_bpc"), "protocol": r.get("protocol"),
            "corpus": r.get("corpus"), "corpus_sha256": r.get("corpus_hash"), "steps": r.get("steps"),
            "seed": r.get("seed"), "device": r.get("device"),
            "bf16": bool(c.get("bf16")) and str(r.get("device", "")).startswith("cuda"),
            "run_dir": str(lm.run_dir)}


# -- speed --------------------------------------------------------------------------------------
def measure_speed(module_file: Path, rnn: str, sizes: tuple[int, int, int], steps: int = 50,
                  batch: int = 16, budget_s: float = 2.0) -> dict[str, Any]:
    """Milliseconds per forward (no grad) and per forward + backward of the exported `rnn` class and of
    torch.nn.LSTM with the same (num_layers, input_size, hidden_size), on one CPU thread, over
    `steps` x `batch`: the best of `rounds` (1-3, as `budget_s` allows) after a warm-up round (0: the
    warm-up round itself, when it outlasts `budget_s`: a big cell). Each timing is the CPU time of the
    measuring thread, so that other work on the machine (which takes wall time, not this thread's CPU
    time) changes it little; the four alternate within a round. `load`: the load average per core
    when measuring (above 1, caches are shared with other work: the ratios are rougher)."""
    layers, inputs, hidden = sizes
    spec = importlib.util.spec_from_file_location(f"_nas_export_{module_file.stem}", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    models = {"plain": getattr(module, rnn)(inputs, hidden, layers), "lstm": torch.nn.LSTM(inputs, hidden, layers)}
    x = torch.randn(steps, batch, inputs)
    runs = {}
    for kind, model in models.items():
        runs[f"{kind}_forward_ms"] = lambda m=model: _forward(m, x)
        runs[f"{kind}_train_ms"] = lambda m=model: m(x)[0].sum().backward()
    rounds: list[dict[str, float]] = []
    deadline = time.perf_counter() + budget_s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # all work on this thread: its CPU time is the cost
    try:
        for _ in range(4):
            rounds.append({})
            for key, fn in runs.items():
                t0 = time.thread_time()
                fn()
                rounds[-1][key] = time.thread_time() - t0
            if time.perf_counter() > deadline:  # a big cell: the warm-up round is all it gets
                break
    finally:
        torch.set_num_threads(threads)
    timed = rounds[1:] or rounds  # round 0 is the warm-up: allocations, first-call dispatch
    best = {key: min(r[key] for r in timed) for key in runs}
    out: dict[str, Any] = {k: v * 1e3 for k, v in best.items()}
    out.update(steps=steps, batch=batch, sizes=list(sizes), rounds=len(rounds) - 1, machine=machine(), load=_load(),
               forward_ratio=out["plain_forward_ms"] / out["lstm_forward_ms"],
               train_ratio=out["plain_train_ms"] / out["lstm_train_ms"])
    return out


def _forward(model, x) -> None:
    with torch.no_grad():
        model(x)


def _load() -> float | None:
    """The 1-minute load average per CPU core (None where the OS does not say)."""
    import os

    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def machine() -> str:
    """This CPU's model name (Linux), its architecture and torch's version."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({platform.machine()}), torch {torch.__version__}"
