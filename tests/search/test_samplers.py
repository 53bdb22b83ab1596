"""Controllers: one contract every controller in CONTROLLERS passes (after Optuna's BasicSamplerTestCase),
then what is particular to aging evolution and REINFORCE, then the factory's errors.

Everything runs on a toy define-by-run space written here in the house style (conditional branches,
position-encoded names, each name always with the same choices), with cheap synthetic objectives.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FixedTrial, TrialState, create_trial

from nas.search.samplers.evolution import MUTATED_ATTR, PARENT_ATTR, SEED_ATTR, AgingEvolutionSampler
from nas.search.samplers.registry import CONTROLLERS, is_multi_objective, make_sampler
from nas.search.samplers.reinforce import ORDER_ATTR, ReinforceSampler

OPS = ("add", "mul", "tanh", "sigmoid")
BINARY = ("add", "mul")


def toy_space(trial) -> tuple:
    """n nodes, each an op over earlier nodes (node i reads 0..i), then an output activation."""
    n = trial.suggest_int("n", 2, 4)
    nodes = []
    for i in range(n):
        op = trial.suggest_categorical(f"s{n}.node{i}.op", OPS)
        inputs = [trial.suggest_int(f"s{n}.node{i}.in0", 0, i)]
        if op in BINARY:
            inputs.append(trial.suggest_int(f"s{n}.node{i}.in1", 0, i))
        nodes.append((op, *inputs))
    scale = trial.suggest_float("init.scale", 0.05, 1.0, log=True)
    act = trial.suggest_categorical("out.act", ("tanh", "identity"))
    return tuple(nodes), round(scale, 6), act


def toy_bpc(cell: tuple) -> float:
    nodes, scale, act = cell
    return 1.0 + 0.1 * len(nodes) + 0.2 * sum(op == "mul" for op, *_ in nodes) + abs(math.log(scale) + 1.5) \
        + 0.3 * (act == "identity")


def toy_params(cell: tuple) -> int:
    return sum(1 + (op in BINARY) for op, *_ in cell[0])


# seven decisions, one single-valued (s2.node0.in0); fully determines a cell up to init.scale
TARGET = {"n": 2, "s2.node0.op": "tanh", "s2.node0.in0": 0, "s2.node1.op": "add", "s2.node1.in0": 1,
          "s2.node1.in1": 0, "out.act": "identity"}
TARGET_CELL = {**TARGET, "init.scale": 0.2}
OTHER_CELL = {"n": 3, "s3.node0.op": "mul", "s3.node0.in0": 0, "s3.node0.in1": 0, "s3.node1.op": "tanh",
              "s3.node1.in0": 1, "s3.node2.op": "sigmoid", "s3.node2.in0": 2, "init.scale": 0.5, "out.act": "tanh"}

# small populations and startup phases, so that 20-40 trials reach each controller's own behaviour
SMALL = {"tpe": {"n_startup_trials": 5}, "nsga2": {"population_size": 6},
         "evolution": {"population_size": 6, "sample_size": 3}}

# controllers whose every trial is a function of (seed, trial number, study history)
HISTORY_DETERMINED = ("evolution", "reinforce")


def small_sampler(name: str, seed: int | None, **options) -> optuna.samplers.BaseSampler:
    return make_sampler(name, seed, **{**SMALL.get(name, {}), **options})


def new_study(name: str, seed: int | None, storage=None, study_name: str | None = None,
              **options) -> optuna.Study:
    directions = ["minimize"] * (2 if is_multi_objective(name) else 1)
    return optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                               sampler=small_sampler(name, seed, **options))


def make_objective(multi: bool, unruly: bool = False):
    """The toy objective; duplicate cells reuse the first result as the real objective does. `unruly`
    makes trials fail (invalid, diverged, error, lost), get pruned, or run normally, by trial number."""
    seen: dict[tuple, tuple[int, float]] = {}

    def objective(trial):
        cell = toy_space(trial)
        kind = trial.number % 7 if unruly else 0
        if kind in (1, 2, 4):
            trial.set_user_attr("nas_state", {1: "invalid", 2: "diverged", 4: "lost"}[kind])
            raise RuntimeError("the cell failed")
        if kind == 3:
            raise RuntimeError("an error without nas_state")
        if kind == 5:
            if not multi:
                trial.report(toy_bpc(cell) + 1.0, step=1)
            raise optuna.TrialPruned()
        if cell in seen:
            trial.set_user_attr("duplicate_of", seen[cell][0])
            bpc = seen[cell][1]
        else:
            bpc = toy_bpc(cell)
            seen[cell] = (trial.number, bpc)
        return (bpc, toy_params(cell)) if multi else bpc

    return objective


def replayed(params: dict):
    """The space replayed on fixed params: (the params it asks for, their distributions)."""
    fixed = FixedTrial(params)
    toy_space(fixed)
    return fixed.params, fixed.distributions


def assert_in_space(trial: optuna.trial.FrozenTrial) -> None:
    params, distributions = replayed(trial.params)
    assert params == trial.params, f"trial {trial.number}: names outside the space or missing"
    assert distributions == trial.distributions
    for name, value in trial.params.items():
        assert distributions[name]._contains(distributions[name].to_internal_repr(value)), (name, value)


def frozen(params: dict, state=TrialState.COMPLETE, value=None, **kw) -> optuna.trial.FrozenTrial:
    return create_trial(state=state, value=value, params=params, distributions=replayed(params)[1], **kw)


@pytest.mark.parametrize("name", CONTROLLERS)
class TestControllerContract:
    def test_proposes_only_params_of_the_space(self, name):
        study = new_study(name, seed=0)
        study.optimize(make_objective(is_multi_objective(name)), n_trials=25)
        assert len(study.trials) == 25
        for trial in study.trials:
            assert trial.state == TrialState.COMPLETE
            assert_in_space(trial)

    def test_reproducible_from_seed(self, name):
        def run(seed):
            study = new_study(name, seed=seed)
            study.optimize(make_objective(is_multi_objective(name)), n_trials=20)
            return [t.params for t in study.trials]

        first = run(1)
        assert run(1) == first
        assert run(2) != first

    def test_survives_failed_pruned_lost_and_duplicate_trials(self, name):
        study = new_study(name, seed=0)
        objective = make_objective(is_multi_objective(name), unruly=True)
        study.enqueue_trial({"n": 3, "s3.node0.op": "mul"})       # partly fixed, the rest to the controller
        study.optimize(objective, n_trials=35, catch=(RuntimeError,))
        earlier = next(t for t in study.trials if t.state == TrialState.COMPLETE)
        study.enqueue_trial(earlier.params)                         # trial 35: a duplicate cell
        study.optimize(objective, n_trials=15, catch=(RuntimeError,))
        trials = study.trials
        assert len(trials) == 50
        assert trials[0].params["n"] == 3 and trials[0].params["s3.node0.op"] == "mul"
        assert trials[35].user_attrs["duplicate_of"] == earlier.number
        states = [t.state for t in trials]
        assert states.count(TrialState.FAIL) == sum(n % 7 in (1, 2, 3, 4) for n in range(50))
        assert states.count(TrialState.PRUNED) == sum(n % 7 == 5 for n in range(50))
        for trial in trials:
            assert_in_space(trial)

    def test_resumes_from_journal_storage(self, name, tmp_path):
        def storage():
            return JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))

        objective = make_objective(is_multi_objective(name))
        new_study(name, seed=3, storage=storage(), study_name="s").optimize(objective, n_trials=10)
        resumed = optuna.load_study(study_name="s", storage=storage(), sampler=small_sampler(name, 3))
        resumed.optimize(objective, n_trials=10)
        trials = resumed.trials
        assert len(trials) == 20 and all(t.state == TrialState.COMPLETE for t in trials)
        for trial in trials:
            assert_in_space(trial)
        if name in HISTORY_DETERMINED:      # the restart is invisible: same trials as one continuous run
            continuous = new_study(name, seed=3)
            continuous.optimize(make_objective(False), n_trials=20)
            assert [t.params for t in trials] == [t.params for t in continuous.trials]


@pytest.mark.parametrize("name", HISTORY_DETERMINED)
def test_single_objective_controllers_refuse_multi_objective_studies(name):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(name, 0))
    with pytest.raises(ValueError, match="single-objective.*nsga2"):
        study.optimize(make_objective(True), n_trials=1)


# ---- aging evolution ---------------------------------------------------------------------------------

def test_evolution_starts_from_seed_cells_then_mutates_one_decision_of_the_parent():
    study = new_study("evolution", seed=0, seed_params=[TARGET_CELL, OTHER_CELL])
    study.optimize(make_objective(False), n_trials=60)
    trials = study.trials
    assert trials[0].params == TARGET_CELL and trials[1].params == OTHER_CELL
    assert [t.system_attrs.get(SEED_ATTR) for t in trials[:3]] == [0, 1, None]
    children = [t for t in trials if PARENT_ATTR in t.system_attrs]
    assert [t.number for t in children] == list(range(6, 60))    # the population of 6 is full from trial 6
    same_names = 0
    for child in children:
        parent = trials[child.system_attrs[PARENT_ATTR]]
        mutated = child.system_attrs[MUTATED_ATTR]
        assert parent.number < child.number and mutated in parent.params
        assert child.params[mutated] != parent.params[mutated]
        shared = (set(child.params) & set(parent.params)) - {mutated}
        assert all(child.params[n] == parent.params[n] for n in shared), child.number
        if set(child.params) == set(parent.params):
            same_names += 1
            assert sum(child.params[n] != parent.params[n] for n in child.params) == 1
    assert same_names > 30


def ranked_study(*trials, population_size=3):
    study = optuna.create_study(sampler=AgingEvolutionSampler(population_size=population_size,
                                                              sample_size=population_size, seed=0))
    for trial in trials:
        study.add_trial(trial)
    return study


def parent_of_next_trial(study: optuna.Study) -> int:
    trial = study.ask()
    toy_space(trial)
    study.tell(trial, 1.0)
    return study.trials[-1].system_attrs[PARENT_ATTR]


def test_evolution_ranks_complete_then_pruned_by_score_and_failed_last():
    lost = {"nas_state": "lost"}
    fail = frozen(OTHER_CELL, TrialState.FAIL, user_attrs={"nas_state": "invalid"})
    # a pruned trial that was already better early than a complete one at the end wins
    assert parent_of_next_trial(ranked_study(
        frozen(TARGET_CELL, value=2.0), frozen(OTHER_CELL, TrialState.PRUNED, intermediate_values={1: 3.0, 2: 1.5}),
        fail)) == 1
    # ties go to the complete trial
    assert parent_of_next_trial(ranked_study(
        frozen(OTHER_CELL, TrialState.PRUNED, intermediate_values={1: 2.0}), frozen(TARGET_CELL, value=2.0),
        fail)) == 1
    # lost trials are not in the population: it is still trials 0-2, and 0 is the best
    assert parent_of_next_trial(ranked_study(
        frozen(TARGET_CELL, value=1.0), frozen(OTHER_CELL, value=3.0), frozen(OTHER_CELL, value=2.0),
        frozen(TARGET_CELL, TrialState.FAIL, user_attrs=lost), frozen(TARGET_CELL, TrialState.FAIL, user_attrs=lost),
    )) == 0


def test_evolution_rejects_bad_sizes():
    with pytest.raises(ValueError, match="sample_size"):
        AgingEvolutionSampler(population_size=3, sample_size=4)
    with pytest.raises(ValueError, match="population_size"):
        make_sampler("evolution", population_size=0)


# ---- REINFORCE -------------------------------------------------------------------------------------------

def test_reinforce_learns_to_prefer_the_rewarded_cell():
    def mismatches(trial):
        toy_space(trial)
        return float(sum(trial.params.get(k) != v for k, v in TARGET.items()))

    sampler = make_sampler("reinforce", seed=0)
    distributions = replayed(TARGET_CELL)[1]
    before = sampler.log_prob(TARGET, distributions)
    study = optuna.create_study(sampler=sampler)
    study.optimize(mismatches, n_trials=150)
    sampler.learn(study)
    after = sampler.log_prob(TARGET, distributions)
    values = [t.value for t in study.trials]
    assert after > before + 2.0, (before, after)
    assert sum(values[-30:]) / 30 < sum(values[:30]) / 30 - 1.0
    last = study.trials[-1]          # the policy's decisions, in the order the space asked for them
    assert last.system_attrs[ORDER_ATTR] == [
        n for n, d in last.distributions.items() if not d.single() and not isinstance(d, FloatDistribution)]


def test_reinforce_restart_rebuilds_the_policy_of_a_continuous_run(tmp_path):
    def storage():
        return JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))

    objective = make_objective(False)
    first = make_sampler("reinforce", seed=5)
    optuna.create_study(storage=storage(), study_name="s", sampler=first).optimize(objective, n_trials=15)
    restarted = make_sampler("reinforce", seed=5)
    resumed = optuna.load_study(study_name="s", storage=storage(), sampler=restarted)
    resumed.optimize(objective, n_trials=15)
    continuous = make_sampler("reinforce", seed=5)
    whole = optuna.create_study(sampler=continuous)
    whole.optimize(make_objective(False), n_trials=30)

    assert restarted.learn(resumed) == 1 and continuous.learn(whole) == 1     # the last trial
    for params in (TARGET_CELL, OTHER_CELL):
        distributions = replayed(params)[1]
        assert restarted.log_prob(params, distributions) == pytest.approx(
            continuous.log_prob(params, distributions), abs=1e-6)
    a, b = restarted.policy_state(), continuous.policy_state()
    assert a.keys() == b.keys()
    assert all(float((a[k] - b[k]).abs().max()) < 1e-6 for k in a)


def policy_after(*trials) -> ReinforceSampler:
    """A fresh policy that has learned from these trials, numbered in order."""
    study = optuna.create_study(sampler=ReinforceSampler(seed=0))
    for trial in trials:
        study.add_trial(trial)
    sampler = study.sampler
    sampler.learn(study)
    return sampler


def same_policy(a: ReinforceSampler, b: ReinforceSampler) -> bool:
    sa, sb = a.policy_state(), b.policy_state()
    return sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


def test_reinforce_ignores_lost_trials_and_learns_from_the_others():
    good, bad = frozen(TARGET_CELL, value=1.2), frozen(OTHER_CELL, value=2.5)

    def failed(state):
        return frozen(OTHER_CELL, TrialState.FAIL, user_attrs={"nas_state": state} if state else {})

    base = policy_after(good, bad, good)
    assert same_policy(policy_after(good, bad, failed("lost"), good), base)
    for state in ("invalid", "diverged", "error", None):
        assert not same_policy(policy_after(good, bad, failed(state), good), base)
    # a failure is worth -fail_value; a pruned trial its last intermediate value
    assert same_policy(policy_after(good, failed("invalid"), good),
                       policy_after(good, frozen(OTHER_CELL, value=10.0), good))
    assert same_policy(policy_after(good, frozen(OTHER_CELL, TrialState.PRUNED, intermediate_values={1: 4.0, 3: 2.5}),
                                    good), base)


def test_reinforce_waits_for_running_trials_to_learn_in_trial_number_order():
    study = optuna.create_study(sampler=ReinforceSampler(seed=0))
    study.add_trial(frozen(TARGET_CELL, value=1.0))
    running = study.ask()
    toy_space(running)
    study.add_trial(frozen(OTHER_CELL, value=2.0))
    assert study.sampler.learn(study) == 0          # trial 0 was learned when trial 1 began; 2 waits for 1
    study.tell(running, 1.5)
    assert study.sampler.learn(study) == 2


def test_reinforce_refuses_wide_int_ranges_and_other_studies():
    study = optuna.create_study(sampler=make_sampler("reinforce", seed=0))
    with pytest.raises(ValueError, match="at most 256"):
        study.optimize(lambda t: t.suggest_int("width", 1, 1000), n_trials=1)
    with pytest.raises(ValueError, match="one sampler per study"):
        study.sampler.learn(optuna.create_study())
    with pytest.raises(ValueError, match="unknown param"):
        ReinforceSampler(seed=0).log_prob({"n": 2})


# ---- the factory ---------------------------------------------------------------------------------------

def test_make_sampler_builds_each_controller_and_rejects_unknown_names_and_options():
    kinds = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
             "nsga2": optuna.samplers.NSGAIISampler, "evolution": AgingEvolutionSampler,
             "reinforce": ReinforceSampler}
    assert set(kinds) == set(CONTROLLERS)
    for name, kind in kinds.items():
        assert isinstance(make_sampler(name, seed=0), kind)
    assert [is_multi_objective(n) for n in CONTROLLERS] == [n == "nsga2" for n in CONTROLLERS]
    with pytest.raises(ValueError, match="unknown controller 'darts'.*random, tpe, nsga2, evolution, reinforce"):
        make_sampler("darts")
    with pytest.raises(ValueError, match="unknown controller"):
        is_multi_objective("darts")
    with pytest.raises(ValueError, match="takes no option.* popsize.*population_size"):
        make_sampler("evolution", popsize=10)
    with pytest.raises(ValueError, match="takes no option.* n_startup_trials.*none"):
        make_sampler("random", n_startup_trials=3)
