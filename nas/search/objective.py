"""One trial: sample a cell, validate, deduplicate, screen, train, report, return val bpc.

    sample (the controller, through the space) -> CellSpec (invalid: the trial fails with the reason)
    -> its canonical form (what is trained and recorded), its hash (functionally equal cells share
       it) and the reference cell it equals, if any
    -> same cell already evaluated at the same budget? reuse its result, tag duplicate; the same cell
       being trained by another worker right now? wait for it, then reuse
    -> screen (a few cheap steps: a cell that would diverge at once fails as `screened`)
    -> evaluate(spec, trainer, seed), reporting intermediate val bpc to the pruner
    -> val bpc (minimised), or (val bpc, parameter count) for multi-objective controllers

So no cell is trained twice at one budget: a duplicate of a pruned trial is pruned again with the
earlier trial's intermediate values, a duplicate of a diverged or screened one fails the same way.

What each finished trial carries is its record (nas.trials.TrialRecord, written only through
nas.trials): its outcome (complete / pruned / invalid / screened / diverged / error / lost /
duplicate), the reason for failures, the reference cell it equals (e.g. "mut3", or "new"), its label
("trial 5 = mut3" / "trial 7 (new)"), hash, equations (the cell as readable lines), JSON, budget, code
version, and the evaluation's numbers (params, hidden_size, seconds, chars_per_sec, train_bpc,
curve). optuna-dashboard shows them on each trial.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas import trials
from nas.cell import CellError, CellSpec, identify
from nas.config import SPEED_ONLY, TrainConfig
from nas.trials import CellFacts, Outcome, TrialRecord

# TrainConfig fields that change where or how visibly a cell trains, not its score.
# How often a trial polls for the same cell being trained by another worker.
WAIT_POLL = 2.0


def equations(spec: CellSpec) -> list[str]:
    """The cell as readable lines, one per node and one per new state: ["i = sigmoid(i_lin)", ...,
    "h' = h_new"] (what optuna-dashboard shows of a trial's cell); options only where they differ
    from the op's defaults."""
    from nas.cell.ops import OPS

    def call(n) -> str:
        defaults = OPS[n.op].options
        args = [*n.inputs, *(f"{k}={v!r}" for k, v in n.options if defaults.get(k, object()) != v)]
        return f"{n.name} = {n.op}({', '.join(args)})"

    return [call(n) for n in spec.nodes] + [f"{s}' = {o}" for s, o in zip(spec.state, spec.outputs)]


def cell_label(number: int, reference: str | None) -> str:
    """How a trial is named everywhere (terminal, MLflow, optuna-dashboard): 'trial 5 = mut3' for a
    trial whose cell is a reference cell, 'trial 7 (new)' otherwise."""
    return f"trial {number} = {reference}" if reference else f"trial {number} (new)"


class TrialFailed(Exception):
    """The trial ends as FAIL; `state` (an Outcome) and the message are recorded on it."""

    def __init__(self, state: Outcome, reason: str):
        super().__init__(reason)
        self.state = Outcome(state)


def budget_key(cfg: TrainConfig, seed: int, corpus_hash: str) -> str:
    """Identity of 'the same budget': everything that can change a cell's score."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in SPEED_ONLY}
    blob = json.dumps({"trainer": fields, "seed": seed, "corpus": corpus_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Objective:
    space: Callable[[optuna.trial.BaseTrial], CellSpec]
    trainer: TrainConfig
    corpus: Any                        # nas.data.Corpus
    seed: int
    multi_objective: bool = False
    evaluate: Callable[..., Any] | None = None  # injectable for tests; default nas.train.evaluate
    # (spec, trainer, corpus, seed) -> None or the reason; default nas.train.screen with the default
    # evaluate, none with an injected one (a test's stand-in trains nothing to screen)
    screen: Callable[..., str | None] | None = None
    # study -> None: fail the trials whose worker died (storage.reap_lost), so that a trial waiting for
    # the same cell in another worker's trial stops waiting when that worker is gone
    reap: Callable[[optuna.Study], Any] | None = None
    on_result: Callable[..., None] | None = None  # (trial, spec, EvalResult) hook
    trials_dir: Path | None = None     # each trial's run (weights, sample, cell) goes to trials_dir/NNNNN

    def __post_init__(self) -> None:
        self.budget = budget_key(self.trainer, self.seed, self.corpus.source_hash)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            spec = self.space(trial)
        except CellError as e:
            raise TrialFailed(Outcome.INVALID, str(e)) from None
        from nas.provenance import short

        # The canonical form is what is trained, recorded and exported: the same function in its one
        # spelling, so a score belongs to its hash (a spelling with an always-zero state would carry
        # weights that do nothing, get a smaller hidden size at the same parameter budget, and score
        # differently from its twin).
        spec = spec.canonical()
        h, reference = spec.canonical_hash(), identify(spec)
        trials.write_cell(trial, CellFacts(
            cell_hash=h, cell_json=spec.to_json(indent=None), label=cell_label(trial.number, reference),
            equations=tuple(equations(spec)), budget=self.budget, code_version=short(), reference=reference))
        earlier = self._earlier_result(trial, h)
        if earlier is not None:
            return self._reuse(trial, earlier)
        self._screen(spec, trial)
        result = self._evaluate(spec, trial)
        trials.write_result(trial, result)
        if self.on_result is not None:
            self.on_result(trial, spec, result)
        if result.divergence is not None:
            raise TrialFailed(Outcome.DIVERGED, result.divergence)
        return (result.val_bpc, float(result.params)) if self.multi_objective else result.val_bpc

    def _screen(self, spec: CellSpec, trial: optuna.Trial) -> None:
        screen = self.screen
        if screen is None and self.evaluate is None:
            from nas.train import screen
        if screen is None:
            return
        start = time.perf_counter()
        reason = screen(spec, self.trainer, self.corpus, self.seed)
        trials.write_screen_seconds(trial, round(time.perf_counter() - start, 3))
        if reason is not None:
            trials.write_seconds(trial, round(time.perf_counter() - start, 3))
            raise TrialFailed(Outcome.SCREENED, reason)

    def _evaluate(self, spec: CellSpec, trial: optuna.Trial):
        evaluate = self.evaluate
        if evaluate is None:
            from nas.train import evaluate

        def report(step: int, bpc: float) -> None:
            if self.multi_objective:
                return  # Optuna cannot prune multi-objective trials
            trial.report(bpc, step)
            # Never at the last step: the training is done, so stopping it saves nothing and would throw
            # a complete score away (successive halving has a rung at the last step when steps is
            # min_resource x reduction_factor^k).
            if step < self.trainer.steps and trial.should_prune():
                trials.mark(trial, Outcome.PRUNED, f"pruned at step {step} (val bpc {bpc:.4f})")
                raise optuna.TrialPruned(f"pruned at step {step}")

        out = None if self.trials_dir is None else self.trials_dir / f"{trial.number:05d}"
        if out is not None:
            trials.write_run_dir(trial, str(out.resolve()))
        return evaluate(spec, self.trainer, self.seed, self.corpus, callback=report,
                        desc=f"trial {trial.number}", out_dir=out)

    def _earlier_result(self, trial: optuna.Trial, cell_hash: str):
        """The trial to reuse for the same cell at the same budget, or None: this trial trains it.

        A finished one (complete, pruned, diverged or screened: each is deterministic for a given seed
        and budget, up to the pruner's view of the moment) is reused at once. Against the same cell
        running in another worker, a claim without a lock (storages have no compare-and-set on
        attributes): every trial writes its hash first (the caller did); a trial waits while an
        earlier-numbered one runs the cell, or a later-numbered one has marked itself `training`;
        otherwise it marks itself and checks once more for an earlier one (which then wins). Two trials
        of one cell never both train, and never wait on each other for good."""
        study, number = trial.study, trial.number
        while True:
            earlier, running = None, []
            for t in study.get_trials(deepcopy=False):
                r = TrialRecord.of(t)
                if r.number == number or r.cell_hash != cell_hash or r.budget != self.budget or r.is_duplicate:
                    continue
                if r.is_reusable:
                    earlier = t
                    break
                if r.state == TrialState.RUNNING:
                    running.append(r)
            if earlier is not None:
                trials.set_training(trial, False)
                return earlier
            first = any(r.number < number for r in running)
            if not first and not any(r.training for r in running):
                if not TrialRecord.of(trial).training:
                    trials.set_training(trial, True)
                    continue  # check once more, now that the others can see the mark
                return None
            if TrialRecord.of(trial).training:
                trials.set_training(trial, False)  # an earlier trial of the cell wins
            time.sleep(WAIT_POLL)
            if self.reap is not None:
                self.reap(study)

    def _reuse(self, trial: optuna.Trial, earlier) -> float | tuple[float, float]:
        trials.mark_duplicate(trial, earlier)
        record = TrialRecord.of(earlier)
        if earlier.state == TrialState.FAIL:
            state = record.outcome or Outcome.DIVERGED
            trials.mark(trial, state)
            raise TrialFailed(state, f"duplicate of trial {earlier.number}: "
                                     f"{record.reason if record.reason is not None else state}")
        if earlier.state == TrialState.PRUNED:
            # The same cell at the same budget: its curve would be the same, so it is pruned again
            # from the earlier trial's intermediate values instead of being trained a second time.
            for step, value in sorted(earlier.intermediate_values.items()):
                trial.report(value, step)
            trials.mark(trial, Outcome.PRUNED, f"duplicate of pruned trial {earlier.number}")
            raise optuna.TrialPruned(f"duplicate of pruned trial {earlier.number}")
        trials.mark(trial, Outcome.DUPLICATE)
        values = earlier.values
        return tuple(values) if self.multi_objective else values[0]
