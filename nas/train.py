"""evaluate(spec, cfg, seed) -> EvalResult: train a cell as a char-level LM, score it in bits/char.

Training is truncated backpropagation through time over B parallel streams of the training split
(nas.data.batchify), the state carried from chunk to chunk and detached between them, with global
gradient-norm clipping, Adam (or SGD) and an lr schedule (cosine to 0.1 x lr by default; these and
the budget of steps, tokens and seconds, charged in one place, are in nas.schedule). Every cell of a
search gets the same data order, seed and budget; the seed picks the initialisation and (with
`seed_data_order`) the circular offset at which the training streams start (`data_offset`).

Scores: bits per character = mean cross-entropy in nats / ln 2, by one protocol for intermediate
evaluations (pruning), search scores and final scores (nas.lm.split_bpc): consecutive segments of
`state_span` characters, each from a zero state, every character scored once; the evaluation
batch size does not change the number. Intermediate evaluations score `eval_chars` worth of
segments spread evenly over the validation split; final ones the whole split (or
`final_eval_chars` worth).

Divergence: a run whose loss or gradient norm is NaN/inf, whose training loss exceeds `max_bpc`, or
whose validation/test score is non-finite, above the uniform bound log2(vocabulary size), or more than
`max_val_gap` bits above the training loss of the moment, is *diverged*: it stops and its result
carries the step and the reason, never a number. `screen` catches most cells that would diverge at
once, in a few plain-torch steps on a small batch, before any kernel is built.

Progress: with `progress` (default: when stderr is a terminal) a tqdm bar; without one, logger
"nas.train" gets an INFO line at least every LOG_EVERY seconds of a long training or evaluation
("trial 3: step 1200/2400, train bpc 2.41, 3,100 chars/s, eta 4m").
"""

from __future__ import annotations

import json
import logging
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
from nas.data import Corpus, batchify, iterate_chunks, load_corpus
from nas.lm import LN2, CharLM, eval_segments, match_hidden_size, sample, save_vocab, split_bpc
from nas.schedule import Budget, lr_factor, make_optimizer, reset_masks

__all__ = ["Callback", "Diverged", "EvalResult", "build_model", "check_config", "data_offset",
           "evaluate", "resolve_device", "save_run", "screen", "split_bpc"]

log = logging.getLogger("nas.train")
LOG_EVERY = 30.0  # seconds between progress lines of a long training or evaluation
SCREEN_BATCH = 4  # streams of a screening step
SCREEN_STEPS = 5  # optimizer steps of a screening (random cells diverged at steps 0-4)
SCREEN_SEQ = 32   # longest chunk of a screening step (its cost is per time step)

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
    divergence: str | None        # None, or why the run diverged ("step 12: loss is nan")
    device: str
    seed: int
    curve: tuple[tuple[int, float], ...] = field(default=())      # (step, intermediate val bpc)
    train_curve: tuple[tuple[int, float], ...] = field(default=())  # (step, train bpc)
    unknown_chars: tuple[tuple[str, int], ...] = field(default=())
    protocol: str = ""            # how val_bpc/test_bpc were scored (segments, characters, format)

    def to_dict(self) -> dict:
        return asdict(self)


class Diverged(Exception):
    """Raised inside the training loop; caught by evaluate and turned into a result."""


def check_config(cfg: TrainConfig) -> None:
    """Reject settings that cannot work, naming the field, before any work starts
    (TrainConfig.check, which is torch-free: CLIs can call it before importing this module)."""
    TrainConfig.check(cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device: {name!r} requested but CUDA is not available")
    return dev


def data_offset(cfg: TrainConfig, seed: int, n_chars: int) -> int:
    """Where the training streams start: a circular offset into the training split drawn from
    `seed` alone (0 without cfg.seed_data_order), so one seed gives every cell one data order."""
    if not cfg.seed_data_order:
        return 0
    return int(np.random.default_rng([seed, 0x0DA7A]).integers(n_chars))


class _Heartbeat:
    """An INFO line on logger nas.train when LOG_EVERY seconds have passed since the last one, while
    `enabled` (the run shows no progress bar): the message is built only when a line is due."""

    def __init__(self) -> None:
        self.last, self.enabled = time.monotonic(), True

    def __call__(self, message: Callable[[], str]) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= LOG_EVERY:
            self.last = now
            log.info(message())


def build_model(spec: CellSpec, cfg: TrainConfig, vocab_size: int, seed: int,
                fused: bool = True) -> CharLM:
    hidden = cfg.hidden_size
    if cfg.param_budget is not None:
        hidden = match_hidden_size(spec, vocab_size, cfg.param_budget, cfg.num_layers, cfg.tie_weights)
    torch.manual_seed(seed)
    return CharLM(spec, vocab_size, hidden, cfg.num_layers, cfg.embedding_size, cfg.dropout,
                  cfg.tie_weights, fused=fused, backend=cfg.backend, cuda_graphs=cfg.cuda_graphs)


def screen(spec: CellSpec, cfg: TrainConfig, corpus: Corpus, seed: int = 0) -> str | None:
    """None if `spec` passes, else why it would diverge at once ("screen: ...").

    SCREEN_STEPS optimizer steps of the trial's own model (its hidden size, initialisation, lr,
    clipping and data order) on SCREEN_BATCH streams in chunks of at most SCREEN_SEQ characters,
    the state carried, by the plain torch step code on the CPU: no kernel is generated or
    compiled. A non-finite state, loss or gradient norm, or a training loss above cfg.max_bpc,
    fails the cell: the divergences evaluate would report in its first steps. Cost: 0.7-2% of a
    150-step conf/trainer/search.yaml trial on one CPU thread (plus ~2 s once per process)."""
    check_config(cfg)
    model = build_model(spec, cfg, corpus.vocab_size, seed, fused=False)
    opt = make_optimizer(cfg, model)
    seq_len = min(cfg.seq_len, SCREEN_SEQ)
    streams = batchify(corpus.train, SCREEN_BATCH, seq_len, name=f"corpus {corpus.name!r}, train split",
                       offset=data_offset(cfg, seed, len(corpus.train)))
    state = None
    for step, (inp, tgt) in enumerate(iterate_chunks(streams, seq_len)):
        if step == SCREEN_STEPS:
            break
        when = "at init" if step == 0 else f"after {step} steps"
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step)
        logits, state = model(inp, state)
        peak = max(float(s.detach().abs().max()) for s in state)
        if not math.isfinite(peak):
            return f"screen: the state is {peak} {when} (activations explode)"
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten())
        value = loss.item() / LN2
        if not math.isfinite(value) or value > cfg.max_bpc:
            return f"screen: training loss is {value:.4g} bits/char {when}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
        if not math.isfinite(norm):
            return f"screen: gradient norm is {norm} {when}"
        opt.step()
        state = tuple(s.detach() for s in state)
    return None


def evaluate(spec: CellSpec, cfg: TrainConfig, seed: int = 0, corpus: Corpus | None = None,
             callback: Callback | None = None, out_dir: str | Path | None = None,
             desc: str | None = None) -> EvalResult:
    """Train `spec` under `cfg` with `seed` on `corpus` (default: Tiny Shakespeare) and score it.

    If `out_dir` is given, the run is saved there: result.json, cell.json, weights.pt (the model's
    state dict), sample.txt (text generated with cfg.temperature)."""
    check_config(cfg)
    start = time.perf_counter()
    if corpus is None:
        corpus = load_corpus()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    model = build_model(spec, cfg, corpus.vocab_size, seed).to(device)
    streams = batchify(corpus.train, cfg.batch_size, cfg.seq_len,
                       name=f"corpus {corpus.name!r}, train split",
                       offset=data_offset(cfg, seed, len(corpus.train))).to(device)
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
        self.budget = Budget(cfg)
        self.step, self.divergence = 0, None
        self.curve: list[tuple[int, float]] = []
        self.train_curve: list[tuple[int, float]] = []
        self.step_seconds = 0.0  # optimizer steps only (no evaluation): the throughput's divisor
        self.final_val: float | None = None
        self.test: float | None = None
        self.window: list[float] = []  # training losses (bits) since the last evaluation
        self.autocast = cfg.bf16 and device.type == "cuda"
        self.heartbeat = _Heartbeat()
        self.label = _desc_of(spec)  # names the run in progress lines

    def score(self, split: str, max_chars: int | None) -> float:
        """bpc of the model on `split` by the one protocol; Diverged if it is no score."""
        cfg, ids = self.cfg, self.corpus.split(split)
        label = f"{self.label} step {self.step}: evaluating {split}"

        def progress(done: int, total: int) -> None:
            self.heartbeat(lambda: f"{label}: {_chars(done)} / {_chars(total)} chars")

        bpc = split_bpc(self.model, ids, cfg.state_span, cfg.eval_batch_size, self.device,
                        max_chars, self.autocast, progress, cfg.eval_burn_in)
        uniform = math.log2(self.corpus.vocab_size)
        train = self.train_curve[-1][1] if self.train_curve else None
        if not math.isfinite(bpc):
            raise Diverged(f"step {self.step}: {split} bpc is {bpc}")
        if bpc > uniform:
            raise Diverged(f"step {self.step}: {split} bpc {bpc:.4g} is above the uniform bound "
                           f"log2({self.corpus.vocab_size}) = {uniform:.4g}")
        if train is not None and bpc > train + cfg.max_val_gap:
            raise Diverged(f"step {self.step}: {split} bpc {bpc:.4g} is more than trainer.max_val_gap="
                           f"{cfg.max_val_gap} above the train bpc {train:.4g}")
        return bpc

    def train(self, streams: torch.Tensor, desc: str | None) -> None:
        cfg = self.cfg
        opt = make_optimizer(cfg, self.model)
        self.label = desc or self.label
        bar = _progress(cfg, self.label)
        self.heartbeat.enabled = bar is None  # a bar already shows the progress
        try:
            while not self.budget.exhausted(self.step):
                self._pass(opt, streams, bar)
            self.final_val = self.score("val", cfg.final_eval_chars)
            if cfg.test:
                self.test = self.score("test", cfg.final_eval_chars)
        except Diverged as e:
            self.divergence = str(e)
        finally:
            if bar is not None:
                bar.close()

    def _pass(self, opt, streams: torch.Tensor, bar) -> None:
        """One pass over the training streams (or what the budget leaves of it)."""
        cfg = self.cfg
        resets = reset_masks(streams.shape[0], max(1, cfg.state_span // cfg.seq_len), streams.device)
        state = None
        for k, (inp, tgt) in enumerate(iterate_chunks(streams, cfg.seq_len)):
            if self.budget.exhausted(self.step):
                break
            keep = resets[k % len(resets)]
            if state is not None and keep is not None:
                state = tuple(s.detach() * keep for s in state)
            t0 = time.perf_counter()
            state, loss = self._step(opt, inp, tgt, state)
            self.step_seconds += time.perf_counter() - t0
            self.window.append(loss / LN2)
            self.step += 1
            self.heartbeat(self._progress_line)
            if self.step % cfg.eval_every == 0 or self.budget.exhausted(self.step):
                self._report(self.window, bar)
                self.window = []

    def _progress_line(self) -> str:
        """'trial 3: step 1200/2400, train bpc 2.41, 3,100 chars/s, eta 4m' (train bpc: the mean
        since the last evaluation; eta: at the pace so far, evaluations included)."""
        cfg, w = self.cfg, self.window
        rate = self.budget.tokens / max(1e-9, self.step_seconds)
        elapsed = self.budget.elapsed()
        left = elapsed / self.step * (cfg.steps - self.step)
        if cfg.seconds is not None:
            left = min(left, max(0.0, cfg.seconds - elapsed))
        return (f"{self.label}: step {self.step}/{cfg.steps}, train bpc {sum(w) / len(w):.2f}, "
                f"{rate:,.0f} chars/s, eta {_duration(left)}")

    def _step(self, opt, inp, tgt, state):
        cfg = self.cfg
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, self.step)
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated BPTT: no gradient into the past
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
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
        val = self.score("val", self.cfg.eval_chars)
        self.curve.append((self.step, val))
        if bar is not None:
            bar.update(self.step - bar.n)
            rate = self.budget.tokens / max(1e-9, self.step_seconds)
            bar.set_postfix(train_bpc=f"{train:.3f}", val_bpc=f"{val:.3f}", chars_s=f"{rate:,.0f}")
        if self.callback is not None:
            self.callback(self.step, val)

    def protocol(self) -> str:
        cfg, corpus = self.cfg, self.corpus
        scored = {s: sum(n for _, n in eval_segments(len(corpus.split(s)), cfg.state_span,
                                                     cfg.final_eval_chars)) for s in ("val", "test")}
        return (f"bits per symbol ({corpus.format}), segments of {cfg.state_span} from a zero state "
                f"after a burn-in of {cfg.eval_burn_in}; "
                f"val {scored['val']:,} of {len(corpus.val) - 1:,} chars, "
                f"test {scored['test']:,} of {len(corpus.test) - 1:,}")

    def result(self, seconds: float) -> EvalResult:
        tokens = self.budget.tokens
        return EvalResult(
            cell_hash=self.spec.canonical_hash(), cell_name=self.spec.name, params=self.model.num_params(),
            hidden_size=self.model.hidden_size, steps=self.step, tokens=tokens, seconds=round(seconds, 3),
            chars_per_sec=round(tokens / self.step_seconds, 1) if self.step_seconds > 0 else 0.0,
            train_bpc=self.train_curve[-1][1] if self.train_curve and not self.divergence else None,
            val_bpc=None if self.divergence else self.final_val,
            test_bpc=None if self.divergence else self.test, divergence=self.divergence,
            device=str(self.device), seed=self.seed, curve=tuple(self.curve),
            train_curve=tuple(self.train_curve), unknown_chars=tuple(sorted(self.corpus.unknown.items())),
            protocol=self.protocol())


def _desc_of(spec: CellSpec) -> str:
    return spec.name or spec.canonical_hash()[:12]


def _duration(seconds: float) -> str:
    """'45s', '4m', '2h05m'."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _chars(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 10**6 else f"{n / 1e3:.0f}k" if n >= 10**3 else str(n)


def _progress(cfg: TrainConfig, desc: str):
    show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)


def save_run(out: Path, spec: CellSpec, model: CharLM, result: EvalResult, corpus: Corpus,
             cfg: TrainConfig, seed: int) -> None:
    """Write result.json, cell.json, weights.pt, vocab.json and (unless diverged) sample.txt into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cell.json").write_text(spec.to_json() + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "weights.pt")
    save_vocab(out, corpus.symbols, corpus.format)  # what turns weights.pt into a usable model
    data = result.to_dict()
    data.update(corpus=corpus.name, corpus_hash=corpus.source_hash, vocab_size=corpus.vocab_size,
                corpus_format=corpus.format, config=asdict(cfg))
    if result.divergence is None and cfg.sample_chars > 0:
        text = sample(model, corpus.encode, corpus.decode, cfg.sample_chars, cfg.temperature, seed=seed)
        (out / "sample.txt").write_text(text)
    (out / "result.json").write_text(json.dumps(data, indent=2) + "\n")
