"""REINFORCE controller (Zoph & Le, 2017) as an Optuna sampler.

The policy is an autoregressive LSTM over the space's decisions, in the order the define-by-run space
asks for them. With x_1 a learned start vector and, for the t-th decision (name n_t, value a_t):

    h_t, c_t = LSTMCell(x_t, (h_{t-1}, c_{t-1}))            hidden size H (64)
    p(a_t)   = softmax(W_{n_t} h_t + b_{n_t})                one head per decision name
    x_{t+1}  = E_{n_t}[a_t]                                  one embedding row per (name, value)

A decision is a CategoricalDistribution (over its choices) or an IntDistribution (categorical over its
values, at most MAX_CHOICES of them). FloatDistribution params are drawn uniformly at random and are
not seen by the policy (nor are single-valued params, which Optuna never asks a sampler about).
Heads and embeddings are created when a name is first met, each initialised U(-0.08, 0.08) (the
paper's init) from a generator seeded by (seed, name), so that every worker and every restart builds
the same ones whatever the order it meets them in.

Learning: REINFORCE with an exponential-moving-average baseline b and an entropy bonus,

    loss = -(R - b) * sum_t log p(a_t) - entropy_weight * sum_t H(p_t),    b <- d b + (1 - d) R

one Adam step per finished trial, with the reward R = -min(score, fail_value): -val bpc for COMPLETE,
-(last intermediate value) for PRUNED, -fail_value for FAIL (invalid, diverged, error). Lost trials
are ignored. b starts at the first reward. Departures from the paper, both for budgets of hundreds,
not thousands, of trials: one single-layer LSTM (not two layers of 35), and lr 2e-3 (not 6e-4).
On the test's toy task (7 decisions, one right answer) 2e-3 finds the answer within ~150 trials for
10 seeds out of 10; 1e-3 is still far from it then, and 5e-3 locked onto a wrong cell for 2 seeds of 4
(an entropy weight of 1e-2 did not prevent that: the lr is the lever). The entropy weight, 1e-3, is
ENAS's 1e-4 scaled up for rewards that differ by tenths of a bit/char: a gentle brake on collapse.

The policy is *replayed* from the study, never checkpointed: before each trial the sampler learns
from the study's finished trials it has not learned from yet, in trial-number order, by recomputing
each trial's log-probabilities under the current policy (teacher forcing, in the order recorded in
the trial's system attr `reinforce:order`, or the params' insertion order for trials this sampler
did not sample) and taking one step each. It learns only from the longest run of finished trials
from trial 0: a trial still running holds back the learning from later ones until it finishes (a
dead worker's trial until it is reaped as lost). The policy is thus a function of the study's
history and the seed alone: a restarted worker, or several workers with the same seed, rebuild the
same policy (replaying N trials costs N small steps, ~4 ms each on one CPU core for cells of ~10
decisions, so a thousand-trial study replays in seconds). Each trial's draws come from
`trial_rng(seed, trial.number)`; the policy's initial weights come from `seed`, or 0 when seed is
None, so that unseeded workers still agree.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from torch.nn import functional as F

from nas.search import optuna_adapter
from nas.search.optuna_adapter import uniform_draw
from nas.search.samplers.base import (
    FINISHED,
    DefineByRunSampler,
    fresh_seed,
    require_single_objective_minimise,
    score,
    trial_rng,
)
from nas.trials import TrialRecord

ORDER_ATTR = "reinforce:order"
MAX_CHOICES = 256
INIT_RANGE = 0.08

Decision = tuple[str, tuple[Any, ...], int]    # (name, choices, index of the value taken)


def decision_choices(name: str, distribution: BaseDistribution) -> tuple[Any, ...] | None:
    """The values the policy chooses among for this param, or None when it leaves the param to chance."""
    if distribution.single():
        return None
    if isinstance(distribution, CategoricalDistribution):
        return tuple(distribution.choices)
    if isinstance(distribution, IntDistribution):
        n = (distribution.high - distribution.low) // distribution.step + 1
        if n > MAX_CHOICES:
            raise ValueError(f"ReinforceSampler: param {name!r} has {n} integer values; the policy "
                             f"treats an int as a categorical of at most {MAX_CHOICES} values")
        return tuple(range(distribution.low, distribution.high + 1, distribution.step))
    return None


def _generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _init_uniform(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)


class _Head(nn.Module):
    """One decision name: logits over its n values from h (H -> n), and the n embeddings (n, H)."""

    def __init__(self, choices: tuple[Any, ...], hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.choices = choices
        self.logits = nn.Linear(hidden_size, len(choices))
        self.embedding = nn.Parameter(torch.empty(len(choices), hidden_size))
        _init_uniform(self, generator)


@dataclass
class _Cursor:
    """Where one sequence is: LSTM state (1, H) each and the next input (1, H)."""
    h: torch.Tensor
    c: torch.Tensor
    x: torch.Tensor


class _Policy(nn.Module):
    def __init__(self, hidden_size: int, seed: int) -> None:
        super().__init__()
        self.hidden_size, self.seed = hidden_size, seed
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        self.start = nn.Parameter(torch.empty(1, hidden_size))
        _init_uniform(self, _generator(seed, "cell"))
        self.heads = nn.ModuleDict()         # keyed by position in `names`: ModuleDict keys cannot hold "."
        self.names: dict[str, str] = {}

    def head(self, name: str, choices: tuple[Any, ...]) -> tuple[_Head, bool]:
        """The head of `name`, and whether it was created just now."""
        key = self.names.get(name)
        if key is not None:
            head = self.heads[key]
            if head.choices != choices:
                raise ValueError(f"ReinforceSampler: param {name!r} came with choices {choices}, earlier "
                                 f"with {head.choices}; a param name must always have the same choices")
            return head, False
        key = self.names[name] = str(len(self.names))
        self.heads[key] = _Head(choices, self.hidden_size, _generator(self.seed, f"head:{name}"))
        return self.heads[key], True

    def begin(self) -> _Cursor:
        zeros = torch.zeros(1, self.hidden_size)
        return _Cursor(zeros, zeros, self.start)

    def log_probs(self, cursor: _Cursor, head: _Head) -> torch.Tensor:
        """Steps the LSTM; the log-probabilities (n,) of the decision's values."""
        cursor.h, cursor.c = self._lstm_step(cursor.x, cursor.h, cursor.c)
        return torch.log_softmax(head.logits(cursor.h)[0], dim=-1)

    def _lstm_step(self, x: torch.Tensor, h: torch.Tensor,
                   c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # nn.LSTMCell's equations, written out: its fused kernel (torch.lstm_cell) goes parallel even at
        # batch 1, and on a 2-core machine busy with other processes took ~13 ms a step against ~0.05 ms
        # for these ops (both ~0.04 ms when the machine is idle).
        gates = F.linear(x, self.cell.weight_ih, self.cell.bias_ih) + F.linear(h, self.cell.weight_hh,
                                                                               self.cell.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def take(self, cursor: _Cursor, head: _Head, index: int) -> None:
        cursor.x = head.embedding[index:index + 1]


@dataclass
class _TrialState:
    rng: np.random.Generator
    cursor: _Cursor
    order: list[str] = field(default_factory=list)


class ReinforceSampler(DefineByRunSampler):
    """Zoph & Le's REINFORCE controller over a define-by-run space (single objective, minimised).

    Args:
        hidden_size: LSTM hidden size H (also the embedding size).
        lr: Adam learning rate.
        baseline_decay: d, decay of the reward's moving-average baseline.
        entropy_weight: weight of the entropy bonus.
        fail_value: the score of a failed trial (and the cap of any score), in the objective's units;
            10 bits/char is worse than uniform guessing on any usual corpus.
        seed: seed of the policy's initial weights (None: 0) and of every trial's draws (None: OS entropy).
    """

    def __init__(self, *, hidden_size: int = 64, lr: float = 2e-3, baseline_decay: float = 0.95,
                 entropy_weight: float = 1e-3, fail_value: float = 10.0, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"ReinforceSampler: seed must be >= 0, got {seed}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"ReinforceSampler: baseline_decay must be in [0, 1), got {baseline_decay}")
        self._policy = _Policy(hidden_size, 0 if seed is None else seed)
        self._optimizer = torch.optim.Adam(self._policy.parameters(), lr=lr)
        self._decay, self._entropy_weight, self._fail_value = baseline_decay, entropy_weight, fail_value
        self._seed = fresh_seed() if seed is None else seed
        self._baseline: float | None = None
        self._learned_through = 0      # every trial numbered below this has been learned from
        self._study_name: str | None = None
        self._trials: dict[int, _TrialState] = {}
        self._lock = threading.RLock()  # Study.optimize(n_jobs > 1) shares one sampler between threads

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        require_single_objective_minimise(study, "ReinforceSampler")
        self.learn(study)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        with self._lock, torch.no_grad():
            state = self._trials.get(optuna_adapter.trial_id(trial))
            if state is None:
                state = self._trials[optuna_adapter.trial_id(trial)] = _TrialState(
                    trial_rng(self._seed, trial.number), self._policy.begin())
            self._feed_given(state, trial)
            choices = decision_choices(param_name, param_distribution)
            if choices is None:
                return uniform_draw(param_distribution, state.rng)
            head = self._head(param_name, choices)
            p = self._policy.log_probs(state.cursor, head).exp().double().numpy()
            index = int(state.rng.choice(len(choices), p=p / p.sum()))
            self._policy.take(state.cursor, head, index)
            state.order.append(param_name)
            optuna_adapter.set_system_attr(study, trial, ORDER_ATTR, state.order)
            return choices[index]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._trials.pop(optuna_adapter.trial_id(trial), None)

    def learn(self, study: optuna.Study) -> int:
        """Learn from the study's finished trials not learned from yet (see the module docstring).

        Called by `before_trial`; call it to bring the policy up to date with a finished study.
        Returns the number of policy steps taken.
        """
        if self._study_name not in (None, study.study_name):
            raise ValueError(f"ReinforceSampler: learns from study {self._study_name!r}, got "
                             f"{study.study_name!r}; use one sampler per study")
        self._study_name = study.study_name
        trials = sorted(optuna_adapter.all_trials(study),
                        key=lambda t: t.number)
        steps = 0
        with self._lock:
            for trial in trials[self._learned_through:]:
                if trial.state not in FINISHED:
                    break
                self._learned_through = trial.number + 1
                decisions = [] if TrialRecord.of(trial).is_lost else _decisions(trial)
                if decisions:
                    self._step(decisions, -min(score(trial), self._fail_value))
                    steps += 1
        return steps

    def log_prob(self, params: Mapping[str, Any],
                 distributions: Mapping[str, BaseDistribution] | None = None) -> float:
        """log p(params) under the current policy, the params taken in their order in the mapping.

        Params whose name the policy has met are scored against their known choices; others need their
        distribution in `distributions` (Float and single-valued ones contribute nothing).
        """
        decisions = []
        for name, value in params.items():
            if distributions is not None and name in distributions:
                choices = decision_choices(name, distributions[name])
            elif name in self._policy.names:
                choices = self._policy.heads[self._policy.names[name]].choices
            else:
                raise ValueError(f"ReinforceSampler.log_prob: unknown param {name!r}; pass its distribution")
            if choices is not None:
                decisions.append((name, choices, _index(name, choices, value)))
        with self._lock, torch.no_grad():
            return float(self._sequence(decisions)[0])

    def policy_state(self) -> dict[str, torch.Tensor]:
        """A copy of the policy's weights, heads named "head[<param name>].*", and the baseline."""
        keys = {key: name for name, key in self._policy.names.items()}
        state = {}
        for k, v in self._policy.state_dict().items():
            if k.startswith("heads."):
                key, rest = k[len("heads."):].split(".", 1)
                k = f"head[{keys[key]}].{rest}"
            state[k] = v.detach().clone()
        state["baseline"] = torch.tensor(float("nan") if self._baseline is None else self._baseline)
        return state

    def _head(self, name: str, choices: tuple[Any, ...]) -> _Head:
        head, created = self._policy.head(name, choices)
        if created:
            self._optimizer.add_param_group({"params": list(head.parameters())})
        return head

    def _feed_given(self, state: _TrialState, trial: FrozenTrial) -> None:
        """Teacher-force the decisions the trial made without asking the sampler (enqueued, fixed)."""
        seen = set(state.order)
        for name, value in trial.params.items():
            choices = decision_choices(name, trial.distributions[name])
            if name not in seen and choices is not None:
                head = self._head(name, choices)
                self._policy.log_probs(state.cursor, head)
                self._policy.take(state.cursor, head, _index(name, choices, value))
                state.order.append(name)

    def _sequence(self, decisions: Sequence[Decision]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: (sum of log p(a_t), sum of entropies H(p_t)) of a sequence of decisions."""
        cursor = self._policy.begin()
        log_p = entropy = torch.zeros(())
        for name, choices, index in decisions:
            head = self._head(name, choices)
            lp = self._policy.log_probs(cursor, head)
            log_p = log_p + lp[index]
            entropy = entropy - (lp.exp() * lp).sum()
            self._policy.take(cursor, head, index)
        return log_p, entropy

    def _step(self, decisions: Sequence[Decision], reward: float) -> None:
        if self._baseline is None:
            self._baseline = reward
        advantage = reward - self._baseline
        self._baseline = self._decay * self._baseline + (1.0 - self._decay) * reward
        log_p, entropy = self._sequence(decisions)
        loss = -(advantage * log_p + self._entropy_weight * entropy)
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer.step()


def _index(name: str, choices: tuple[Any, ...], value: Any) -> int:
    try:
        return choices.index(value)
    except ValueError:
        raise ValueError(f"ReinforceSampler: {value!r} is not among the choices {choices} of {name!r}") from None


def _decisions(trial: FrozenTrial) -> list[Decision]:
    """A finished trial's decisions, in the order its params were suggested."""
    recorded = [n for n in trial.system_attrs.get(ORDER_ATTR, []) if n in trial.params]
    names = recorded + [n for n in trial.params if n not in set(recorded)]
    decisions = []
    for name in names:
        choices = decision_choices(name, trial.distributions[name])
        if choices is not None:
            decisions.append((name, choices, _index(name, choices, trial.params[name])))
    return decisions
