"""Search spaces (STYLE.md lesson 7): replays of the reference cells, real Optuna studies, seeds, errors.

Every space is sampled by real studies (RandomSampler, TPESampler) in memory: Optuna itself refuses
a parameter name whose choices change between trials, and the tests also compare the distributions
of every name directly. A trial that raises anything but CellError fails the test.
"""

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from nas.cell import CellError, known_cell
from nas.cell.known import ENAS_GENOTYPE
from nas.search_spaces import SPACES, SearchSpace, get_space, graph, highway, tree

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The reference cells each space must express with its default options.
REQUIRED_KNOWN = {
    "graph": {"rnn_tanh", "lstm", "gru"},
    "highway": {"enas", "darts_v2"},
    "tree": {"nas_cell"},
}
# Spaces with non-default options that the random-sampling tests also cover.
VARIANTS = [
    ("graph", {}), ("graph", {"min_nodes": 1, "max_nodes": 3, "ops": ["linear", "sub", "identity"]}),
    ("highway", {}), ("highway", {"min_nodes": 1, "max_nodes": 2}),
    ("tree", {}), ("tree", {"base": 2}), ("tree", {"base": 4}),
]
N_RANDOM = 200


def recording(space: SearchSpace):
    """An objective that samples a cell and records its hash."""
    def objective(trial: optuna.Trial) -> float:
        spec = space.sample(trial)
        trial.set_user_attr("hash", spec.canonical_hash())
        return float(len(spec.nodes))

    return objective


def run_study(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n_trials: int) -> optuna.Study:
    """A real in-memory study of `space`; a CellError makes a failed trial, anything else fails the test."""
    study = optuna.create_study(sampler=sampler)
    study.optimize(recording(space), n_trials=n_trials, catch=(CellError,))
    return study


# -- known cells --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SPACES))
def test_known_params_replay_the_reference_cells(name):
    space = get_space(name)
    assert REQUIRED_KNOWN[name] <= set(space.known)
    for cell, params in space.known.items():
        replayed = SPACES[name].sample(FixedTrial(params))
        assert replayed.canonical_hash() == known_cell(cell).canonical_hash(), (name, cell)
        assert space.replay(params) == replayed


@pytest.mark.parametrize("name", sorted(SPACES))
def test_known_params_seed_a_study(name):
    """`study.enqueue_trial(space.known[cell])` makes a study evaluate that cell."""
    space = get_space(name)
    cells = sorted(REQUIRED_KNOWN[name])
    study = optuna.create_study()
    for cell in cells:
        study.enqueue_trial(space.known[cell])
    study.optimize(recording(space), n_trials=len(cells))
    assert [t.user_attrs["hash"] for t in study.trials] == [known_cell(c).canonical_hash() for c in cells]


def test_graph_lstm_keeps_its_forget_bias():
    params = get_space("graph").known["lstm"]
    assert 1.0 in params.values()
    replayed = graph.sample(FixedTrial(params)).canonical_hash()
    assert replayed != known_cell("lstm", forget_bias=0.0).canonical_hash()


@pytest.mark.parametrize("name, options, expected", [
    ("graph", {"max_nodes": 12}, {"rnn_tanh", "gru", "mut1", "mut2", "mut3"}),
    ("graph", {"min_nodes": 13, "max_nodes": 13}, {"rnn_tanh", "lstm", "gru", "mut1", "mut2", "mut3"}),
    ("graph", {"ops": ["linear", "tanh"]}, {"rnn_tanh"}),
    ("highway", {"min_nodes": 8, "max_nodes": 8}, {"darts_v2"}),
    ("highway", {"min_nodes": 11, "max_nodes": 11}, {"enas"}),
    ("tree", {"base": 4}, set()),
])
def test_known_follows_the_options(name, options, expected):
    space = get_space(name, **options)
    assert set(space.known) == expected
    for cell, params in space.known.items():
        assert space.replay(params).canonical_hash() == known_cell(cell).canonical_hash()


def test_enas_loose_ends():
    genotype, concat = ENAS_GENOTYPE
    assert highway.loose_ends(genotype) == concat == [2, 5, 6, 9, 10, 11]
    assert get_space("highway").known["enas"]["concat"] == "loose_ends"
    assert get_space("highway").known["darts_v2"]["concat"] == "all"


def test_graph_params_of_round_trips_sampled_cells():
    """Any sampled cell whose h' node no node reads comes back from `params_of`."""
    space = get_space("graph")
    study = run_study(space, optuna.samplers.RandomSampler(seed=3), 60)
    checked = 0
    for trial in study.trials:
        spec = space.replay(trial.params)
        if any(spec.outputs[0] in n.inputs for n in spec.nodes):
            continue
        params = graph.params_of(spec)
        assert params is not None, spec
        assert space.replay(params).canonical_hash() == spec.canonical_hash()
        checked += 1
    assert checked > 30


def test_graph_dedupes_linear_operands():
    params = {"n_state": 1, "n_nodes": 2, "node0.bias_init": 0.0, "node1.op": "linear", "node1.n_in": 3,
              "s1.node1.in0": "n0", "s1.node1.in1": "x", "s1.node1.in2": "n0", "node1.bias_init": 0.0}
    spec = graph.sample(FixedTrial(params), min_nodes=2)
    assert spec.node("n1").inputs == ("n0", "x")


def test_graph_output_is_the_last_node_reading_x_and_state():
    # n1 = tanh(x) reads no state: h' falls back to n0 = linear(x, h).
    params = {"n_state": 1, "n_nodes": 2, "node0.bias_init": 1.0, "node1.op": "tanh", "s1.node1.in0": "x"}
    spec = graph.sample(FixedTrial(params), min_nodes=2)
    assert [n.op for n in spec.nodes] == ["linear"] and spec.outputs == ("n0",)


def test_tree_identity_activation_adds_no_node():
    base = 2
    params = {"inject.node": 0, "new_c.node": 0, "inject.combine": "add", "inject.act": "identity",
              "node0.combine": "add", "node0.act": "identity",
              **{f"leaf{k}.{d}": v for k in range(base) for d, v in (("combine", "add"), ("act", "identity"))}}
    spec = tree.sample(FixedTrial(params), base=base)
    # two linear(x, h) leaves, their sum, the sum with c: h' = c' = (s0 + s1) + c
    assert sorted(n.op for n in spec.nodes) == ["add", "add", "linear", "linear"]
    assert spec.outputs[0] == spec.outputs[1]


def test_tree_repairs_a_cell_whose_h_stays_zero():
    # h' = c' = (s0 + s1) * c: c starts at zero, so h and c stay zero forever (CellSpec refuses
    # it); the injection's mul is read as add, which gives the cell of the test above.
    base = 2
    params = {"inject.node": 0, "new_c.node": 0, "inject.combine": "mul", "inject.act": "identity",
              "node0.combine": "add", "node0.act": "identity",
              **{f"leaf{k}.{d}": v for k in range(base) for d, v in (("combine", "add"), ("act", "identity"))}}
    spec = tree.sample(FixedTrial(params), base=base)
    assert spec == tree.sample(FixedTrial({**params, "inject.combine": "add"}), base=base)
    # Leaves W x * U h are zero while h is: the first is read as W x + U h, which is enough here.
    params |= {"leaf0.combine": "mul", "leaf1.combine": "mul", "inject.combine": "add"}
    spec = tree.sample(FixedTrial(params), base=base)
    assert sorted(n.op for n in spec.nodes) == ["add", "add", "linear", "linear", "linear", "mul"]


# -- sampling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", VARIANTS)
def test_random_sampling(name, options):
    """200 random trials: only CellError may fail a trial, every name keeps one distribution, the
    trials' params replay to their cells, and no cell is invalid."""
    space = get_space(name, **options)
    study = run_study(space, optuna.samplers.RandomSampler(seed=0), N_RANDOM)
    trials = study.trials
    assert len(trials) == N_RANDOM
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    # All three spaces are valid by construction (graph: n0 = linear(x, h) and h' = the last node
    # reading x and the state; its module docstring has the rates of the plain design).
    invalid = sum(t.state == TrialState.FAIL for t in trials)
    assert invalid == 0, f"{name} {options}: {invalid}/{N_RANDOM} invalid"
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    for t in trials:
        for param, dist in t.distributions.items():
            assert seen.setdefault(param, dist) == dist, param
    for t in trials[::4]:  # a quarter is enough to catch a replay that differs, at a quarter the time
        if t.state == TrialState.COMPLETE:
            assert space.replay(t.params).canonical_hash() == t.user_attrs["hash"]
    assert len({t.user_attrs["hash"] for t in trials if t.state == TrialState.COMPLETE}) > 20


def test_graph_never_samples_an_invalid_cell():
    """1,000 uniformly random graph cells: none invalid (a weight on h's path, h reading x and the
    state once zero states are folded), though the last x-and-state node is refused in about a
    fifth of them (the module docstring)."""
    space = get_space("graph")
    study = run_study(space, optuna.samplers.RandomSampler(seed=1), 1000)
    assert [t for t in study.trials if t.state != TrialState.COMPLETE] == []
    # the weight rule in particular (48 of 500 had none before it): every cell keeps a weight matrix
    for t in study.trials[::10]:
        assert space.replay(t.params).canonical().num_linear_terms() > 0


def test_graph_h_falls_back_past_a_weightless_node():
    # n1 = mul(x, h) reads x and the state, but has no weight on its path (and h would stay zero):
    # h' is n0 instead.
    params = {"n_state": 1, "n_nodes": 2, "node0.bias_init": 0.0, "node1.op": "mul",
              "s1.node1.in0": "x", "s1.node1.in1": "h"}
    spec = graph.sample(FixedTrial(params), min_nodes=2)
    assert spec.outputs == ("n0",)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_same_seed_same_cells(name):
    space = get_space(name)

    def hashes(seed):
        study = run_study(space, optuna.samplers.RandomSampler(seed=seed), 20)
        return [t.user_attrs.get("hash") for t in study.trials]

    assert hashes(7) == hashes(7)
    assert hashes(7) != hashes(8)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_tpe_samples_every_space(name):
    study = run_study(get_space(name), optuna.samplers.TPESampler(seed=0, n_startup_trials=10), 30)
    assert len(study.trials) == 30
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


# -- registry and errors ------------------------------------------------------------------------
def test_get_space_binds_options():
    space = get_space("highway", min_nodes=8, max_nodes=8)
    assert space.name == "highway" and "ENAS" in space.description
    study = run_study(space, optuna.samplers.RandomSampler(seed=0), 5)
    assert {t.params["n_nodes"] for t in study.trials} == {8}
    with pytest.raises(AttributeError):
        space.name = "graph"


def test_unknown_space_lists_the_spaces():
    with pytest.raises(ValueError, match="graph, highway, tree"):
        get_space("nasbench101")


@pytest.mark.parametrize("name, options, match", [
    ("graph", {"max_node": 8}, "unknown option.*max_node.*options: min_nodes, max_nodes, ops"),
    ("tree", {"min_nodes": 2}, "unknown option"),
    ("graph", {"min_nodes": 5, "max_nodes": 4}, "min_nodes <= max_nodes"),
    ("graph", {"min_nodes": 0}, "min_nodes <= max_nodes"),
    ("graph", {"ops": ["linear", "mean"]}, "ops must be distinct names"),
    ("graph", {"ops": ["tanh", "tanh"]}, "ops must be distinct names"),
    ("graph", {"ops": []}, "ops must be distinct names"),
    ("graph", {"ops": "tanh"}, "ops must be distinct names"),
    ("highway", {"min_nodes": 13}, "min_nodes <= max_nodes"),
    ("highway", {"max_nodes": 8.5}, "min_nodes <= max_nodes"),
    ("tree", {"base": 6}, "power of two"),
    ("tree", {"base": 1}, "power of two"),
])
def test_bad_options_are_value_errors_not_cell_errors(name, options, match):
    """A bad option must not look like a bad cell (which a study would swallow as a failed trial)."""
    with pytest.raises(ValueError, match=match) as err:
        get_space(name, **options)
    assert not isinstance(err.value, CellError)


def test_bad_options_fail_the_study_not_the_trial():
    with pytest.raises(ValueError, match="power of two"):
        optuna.create_study().optimize(lambda t: len(tree.sample(t, base=3).nodes), n_trials=1,
                                       catch=(CellError,))
