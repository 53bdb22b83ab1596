"""evaluate(spec, cfg, seed) -> EvalResult: train a cell as a char-level LM, score it in bits/char.

Training is truncated backpropagation through time over B parallel streams of the training split
(nas.data.batchify), the state carried from chunk to chunk and detached between them, with global
gradient-norm clipping, Adam (or SGD) and an optional lr schedule. The budget (steps, tokens,
seconds) is charged in one place, `_Budget`. Every cell of a search gets the same data order, seed
and budget.

Scores: bits per character = mean cross-entropy in nats / ln 2, over every character of a split
(`split_bpc`). A run whose loss, gradient norm or validation score is NaN/inf is *diverged*: it
stops and its result carries the step and the reason, never a number.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.cell import CellSpec
from nas.config import TrainConfig
from nas.data import Corpus, batchify, iterate_chunks
from nas.lm import CharLM, match_hidden_size, sample

LN2 = math.log(2.0)

# callback(step, val_bpc): called after every intermediate evaluation. It may raise to stop the run
# (a search raises optuna.TrialPruned); the exception reaches evaluate's caller unchanged.
Callback = Callable[[int, float], None]


@dataclass(frozen=True)
class EvalResult:
    cell_hash: str
    cell_name: str
    params: int
    hidden_size: int
    steps: int
    tokens: int
    seconds: float
    chars_per_sec: float
    train_bpc: float | None
    val_bpc: float | None
    test_bpc: float | None
    diverged: str | None          # None, or the reason ("step 12: loss is nan")
    device: str
    seed: int
    curve: tuple[tuple[int, float], ...] = field(default=())      # (step, intermediate val bpc)
    train_curve: tuple[tuple[int, float], ...] = field(default=())  # (step, train bpc)
    unknown_chars: tuple[tuple[str, int], ...] = field(default=())

    def to_dict(self) -> dict:
        return asdict(self)


class Diverged(Exception):
    """Raised inside the training loop; caught by evaluate and turned into a result."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


class _Budget:
    """Steps, tokens and wall seconds: whichever runs out first ends training."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.start, self.tokens = cfg, time.perf_counter(), 0

    def charge(self, tokens: int) -> None:
        self.tokens += tokens

    def exhausted(self, step: int) -> bool:
        cfg = self.cfg
        return (step >= cfg.steps or (cfg.tokens is not None and self.tokens >= cfg.tokens)
                or (cfg.seconds is not None and self.elapsed() >= cfg.seconds))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    low = cfg.lr_final_ratio
    if cfg.lr_schedule == "cosine":
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.lr_schedule == "linear":
        return 1 - (1 - low) * frac
    return 1.0


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"trainer.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")


def check_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, with the field name, before any work starts."""
    positive = ["steps", "batch_size", "seq_len", "hidden_size", "num_layers", "eval_every",
                "eval_batch_size"]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"trainer.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or not math.isfinite(cfg.lr):
        raise ValueError(f"trainer.lr must be a positive number, got {cfg.lr}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"trainer.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.lr_schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"trainer.lr_schedule must be constant, cosine or linear, got {cfg.lr_schedule!r}")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"trainer.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")


def build_model(spec: CellSpec, cfg: TrainConfig, vocab_size: int, seed: int) -> CharLM:
    hidden = cfg.hidden_size
    if cfg.param_budget is not None:
        hidden = match_hidden_size(spec, vocab_size, cfg.param_budget, cfg.num_layers, cfg.tie_weights)
    torch.manual_seed(seed)
    return CharLM(spec, vocab_size, hidden, cfg.num_layers, cfg.embedding_size, cfg.dropout,
                  cfg.tie_weights)


@torch.no_grad()
def split_bpc(model: CharLM, ids, batch_size: int, seq_len: int, device: torch.device,
              max_chars: int | None = None, autocast: bool = False) -> float:
    """Bits per character over every character of `ids` (or its first `max_chars`).

    The split is cut into `batch_size` contiguous streams; the < batch_size characters that do not
    fill a stream are scored too, as one more stream that continues the last one's state."""
    if max_chars is not None:
        ids = ids[:max_chars]
    was_training = model.training
    model.eval()
    batch_size = max(1, min(batch_size, (len(ids) - 1) // 2))
    streams = batchify(ids, batch_size, 1, name="evaluation split")
    total, count, state = 0.0, 0, None
    with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
        for inp, tgt in iterate_chunks(streams.to(device), seq_len):
            logits, state = model(inp, state)
            total += nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(),
                                                 reduction="sum").item()
            count += tgt.numel()
        n = streams.shape[1]
        tail = torch.from_numpy(np.asarray(ids[batch_size * n - 1:], dtype=np.int64)).to(device)
        if len(tail) > 1 and state is not None:
            last = tuple(s[:, -1:].contiguous() for s in state)
            logits, _ = model(tail[:-1].view(-1, 1), last)
            total += nn.functional.cross_entropy(logits.float().flatten(0, 1), tail[1:],
                                                 reduction="sum").item()
            count += len(tail) - 1
    model.train(was_training)
    return total / count / LN2


def evaluate(spec: CellSpec, cfg: TrainConfig, seed: int = 0, corpus: Corpus | None = None,
             callback: Callback | None = None, out_dir: str | Path | None = None,
             desc: str | None = None) -> EvalResult:
    """Train `spec` under `cfg` with `seed` on `corpus` (default: Tiny Shakespeare) and score it.

    If `out_dir` is given, the run is saved there: result.json, cell.json, weights.pt (the model's
    state dict), sample.txt (text generated with cfg.temperature)."""
    check_config(cfg)
    start = time.perf_counter()
    if corpus is None:
        from nas.data import load_corpus

        corpus = load_corpus()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    model = build_model(spec, cfg, corpus.vocab_size, seed).to(device)
    streams = batchify(corpus.train, cfg.batch_size, cfg.seq_len,
                       name=f"corpus {corpus.name!r}, train split").to(device)
    run = _Run(spec, cfg, seed, model, device, corpus, callback)
    run.train(streams, desc)
    # seconds: the whole evaluation (model, training, every validation and test pass), the cost a
    # search pays per cell; chars_per_sec counts optimizer steps only.
    result = run.result(time.perf_counter() - start)
    if out_dir is not None:
        save_run(Path(out_dir), spec, model, result, corpus, cfg, seed)
    return result


class _Run:
    """The training loop's state, kept apart from evaluate() so each piece reads top to bottom."""

    def __init__(self, spec, cfg, seed, model, device, corpus, callback):
        self.spec, self.cfg, self.seed, self.model, self.device = spec, cfg, seed, model, device
        self.corpus, self.callback = corpus, callback
        self.budget = _Budget(cfg)
        self.step, self.diverged = 0, None
        self.curve: list[tuple[int, float]] = []
        self.train_curve: list[tuple[int, float]] = []
        self.step_seconds = 0.0  # optimizer steps only (no evaluation): the throughput's divisor
        self.final_val: float | None = None
        self.test: float | None = None

    def val_bpc(self, max_chars: int | None) -> float:
        bpc = split_bpc(self.model, self.corpus.val, self.cfg.eval_batch_size, self.cfg.seq_len,
                        self.device, max_chars, self.cfg.bf16 and self.device.type == "cuda")
        if not math.isfinite(bpc):
            raise Diverged(f"step {self.step}: validation bpc is {bpc}")
        return bpc

    def train(self, streams: torch.Tensor, desc: str | None) -> None:
        cfg = self.cfg
        opt = _optimizer(cfg, self.model)
        bar = _progress(cfg, desc or self.spec.name or "cell")
        autocast = cfg.bf16 and self.device.type == "cuda"
        state, window = None, []
        try:
            while not self.budget.exhausted(self.step):
                for inp, tgt in iterate_chunks(streams, cfg.seq_len):
                    if self.budget.exhausted(self.step):
                        break
                    t0 = time.perf_counter()
                    state, loss = self._step(opt, inp, tgt, state, autocast)
                    self.step_seconds += time.perf_counter() - t0
                    window.append(loss / LN2)
                    self.step += 1
                    if self.step % cfg.eval_every == 0 or self.budget.exhausted(self.step):
                        self._report(window, bar)
                        window = []
                state = None  # a new pass over the data starts from a zero state
            self.final_val = self.val_bpc(None)
            if cfg.test:
                self.test = split_bpc(self.model, self.corpus.test, cfg.eval_batch_size, cfg.seq_len,
                                      self.device, None, autocast)
                if not math.isfinite(self.test):
                    raise Diverged(f"step {self.step}: test bpc is {self.test}")
        except Diverged as e:
            self.diverged = str(e)
        finally:
            if bar is not None:
                bar.close()

    def _step(self, opt, inp, tgt, state, autocast):
        cfg = self.cfg
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(cfg, self.step)
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated BPTT: no gradient into the past
        with torch.autocast(self.device.type, torch.bfloat16, enabled=autocast):
            logits, state = self.model(inp, state)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
        value = loss.item()
        if not math.isfinite(value):
            raise Diverged(f"step {self.step}: training loss is {value}")
        if value / LN2 > cfg.max_bpc:
            raise Diverged(f"step {self.step}: training loss {value / LN2:.3g} bits/char exceeds "
                           f"trainer.max_bpc={cfg.max_bpc}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm))
        if not math.isfinite(norm):
            raise Diverged(f"step {self.step}: gradient norm is {norm}")
        opt.step()
        self.budget.charge(tgt.numel())
        return state, value

    def _report(self, window: list[float], bar) -> None:
        train = sum(window) / max(1, len(window))
        self.train_curve.append((self.step, train))
        val = self.val_bpc(self.cfg.eval_chars)
        self.curve.append((self.step, val))
        if bar is not None:
            bar.update(self.step - bar.n)
            rate = self.budget.tokens / max(1e-9, self.step_seconds)
            bar.set_postfix(train_bpc=f"{train:.3f}", val_bpc=f"{val:.3f}", chars_s=f"{rate:,.0f}")
        if self.callback is not None:
            self.callback(self.step, val)

    def result(self, seconds: float) -> EvalResult:
        tokens = self.budget.tokens
        return EvalResult(
            cell_hash=self.spec.canonical_hash(), cell_name=self.spec.name, params=self.model.num_params(),
            hidden_size=self.model.hidden_size, steps=self.step, tokens=tokens, seconds=round(seconds, 3),
            chars_per_sec=round(tokens / self.step_seconds, 1) if self.step_seconds > 0 else 0.0,
            train_bpc=self.train_curve[-1][1] if self.train_curve and not self.diverged else None,
            val_bpc=None if self.diverged else self.final_val,
            test_bpc=None if self.diverged else self.test, diverged=self.diverged,
            device=str(self.device), seed=self.seed, curve=tuple(self.curve),
            train_curve=tuple(self.train_curve), unknown_chars=tuple(sorted(self.corpus.unknown.items())))


def _progress(cfg: TrainConfig, desc: str):
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def save_run(out: Path, spec: CellSpec, model: CharLM, result: EvalResult, corpus: Corpus,
             cfg: TrainConfig, seed: int) -> None:
    """Write result.json, cell.json, weights.pt and (unless diverged) sample.txt into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cell.json").write_text(spec.to_json() + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "weights.pt")
    data = result.to_dict()
    data.update(corpus=corpus.name, corpus_hash=corpus.source_hash, vocab_size=corpus.vocab_size,
                config=asdict(cfg))
    if result.diverged is None and cfg.sample_chars > 0:
        text = sample(model, corpus.encode, corpus.decode, cfg.sample_chars, cfg.temperature, seed=seed)
        (out / "sample.txt").write_text(text)
    (out / "result.json").write_text(json.dumps(data, indent=2) + "\n")
