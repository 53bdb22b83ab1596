"""What a training run may spend and how it steps: the budget, the learning-rate schedule, the
optimizer, and when each training stream's state restarts from zero. nas.train's loop reads these."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from nas.config import TrainConfig


class Budget:
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


def reset_masks(batch: int, span: int, device: torch.device) -> list[torch.Tensor | None]:
    """For chunk k of a pass, masks[k % span]: (1, B, 1), 0 for the streams whose state restarts
    from zero at chunk k (None: none does). Stream b restarts at chunks k = -b * span // B (mod
    span), so that no state is carried more than `span` chunks (about as far as scoring carries
    one) and the cold starts come a few streams at a time all through training, rather than all
    streams at once every `span` chunks."""
    phase = [(-b * span // batch) % span for b in range(batch)]
    masks: list[torch.Tensor | None] = []
    for k in range(span):
        hit = [b for b in range(batch) if phase[b] == k]
        mask = None
        if hit:
            mask = torch.ones(1, batch, 1, device=device)
            mask[0, hit] = 0.0
        masks.append(mask)
    return masks


def lr_factor(cfg: TrainConfig, step: int) -> float:
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


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"trainer.optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
