"""Extending without forking (docs/extending.md): a user's op, search space and controller, defined in
a package outside nas (tests/plugins/my_nas_plugin), reached by dotted path, by entry point and as
objects through the Python API."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from nas.cell import CellError, CellSpec, known_cell, ops
from nas.compile import CellRNN
from nas.compile import fast_path as fused
from nas.search.api import run_search, search_config
from nas.search.run import search
from nas.search.samplers import make_sampler
from nas.search.study import join_study
from nas.search_spaces import get_space

# Cells with a user op warn once that they run the reference path (asserted where it is the subject).
pytestmark = pytest.mark.filterwarnings("ignore:nas. op .* is a user op:RuntimeWarning")

PLUGINS = Path(__file__).parent / "plugins"
TINY = {"steps": 6, "eval_every": 3, "eval_chars": 500, "final_eval_chars": 1000, "sample_chars": 0,
        "batch_size": 8, "seq_len": 32, "hidden_size": 16, "param_budget": None}
QUIET = {"baselines": [], "pruner": {"name": "none"}, "tracking": {"enabled": False},
         "report": {"enabled": False}, "export": {"enabled": False}}


@pytest.fixture
def plugins(monkeypatch):
    """The user's package importable here and in child processes, as if installed; afterwards the
    registries are as they were (other tests check that every registered op is covered)."""
    import nas.search_spaces as spaces
    from nas.search.samplers import registry

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(ops.MODULES_ENV, os.environ.get(ops.MODULES_ENV, ""))  # restored afterwards
    monkeypatch.setattr(spaces, "_REGISTERED", {})
    monkeypatch.setattr(registry, "_REGISTERED", {})
    before = set(ops.OPS)
    import my_nas_plugin.ops  # noqa: F401 - registers swish and half_diff
    yield
    for name in set(ops.OPS) - before:
        del ops.OPS[name]
    for module in [m for m in sys.modules if m.split(".")[0] == "my_nas_plugin"]:
        del sys.modules[module]


@pytest.fixture
def corpus(tmp_path):
    from nas.data import default_corpus_path

    path = tmp_path / "small.txt"
    path.write_text(default_corpus_path().read_text()[:40_000])
    return {"path": str(path), "cache_dir": str(tmp_path / "cache")}


def swish_rnn() -> CellSpec:
    return CellSpec.from_dict({"name": "swish_rnn", "state": ["h"],
                               "nodes": {"a": {"op": "linear", "in": ["x", "h"]}, "y": {"op": "swish", "in": ["a"]}},
                               "outputs": {"h": "y"}})


# ---- ops -------------------------------------------------------------------------------------------

def test_a_user_op_compiles_to_its_equation_with_gradients(plugins, monkeypatch):
    monkeypatch.setattr(fused, "_WARNED_USER_OPS", set())
    fused.uses_user_ops.cache_clear()
    torch.manual_seed(0)
    rnn = CellRNN(swish_rnn(), 4, 4).double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="'swish' is a user op.*reference torch path"):
        out, (h,) = rnn(x)
    W_x, W_h, b = rnn.term_weight("a", "x"), rnn.term_weight("a", "h"), rnn.node_bias("a")
    want, state = [], torch.zeros(3, 4, dtype=torch.float64)
    for t in range(5):
        a = x[t] @ W_x.T + state @ W_h.T + b
        state = a * torch.sigmoid(a)
        want.append(state)
    torch.testing.assert_close(out, torch.stack(want))
    torch.testing.assert_close(h[0], want[-1])
    out.square().sum().backward()
    grads = [p.grad for p in rnn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert torch.autograd.gradcheck(lambda inp: rnn(inp)[0], (x[:2].requires_grad_(),))


def test_a_user_op_takes_options_and_two_operands(plugins, monkeypatch):
    monkeypatch.setattr(fused, "_WARNED_USER_OPS", set())
    fused.uses_user_ops.cache_clear()
    spec = CellSpec.from_dict({"state": ["h"], "nodes": {
        "a": {"op": "linear", "in": ["x", "h"]}, "b": {"op": "linear", "in": ["x"]},
        "s": {"op": "swish", "in": ["a"], "beta": 2.0}, "d": {"op": "half_diff", "in": ["s", "b"]}},
        "outputs": {"h": "d"}})
    assert spec.node("s").option("beta") == 2.0
    rnn = CellRNN(spec, 3, 3)
    x = torch.randn(1, 2, 3)
    with pytest.warns(RuntimeWarning, match="'half_diff' is a user op"):
        out, _ = rnn(x)
    a = x[0] @ rnn.term_weight("a", "x").T + rnn.node_bias("a")
    b = x[0] @ rnn.term_weight("b", "x").T + rnn.node_bias("b")
    torch.testing.assert_close(out[0], 0.5 * (a * torch.sigmoid(2.0 * a) - b))


def test_the_hash_includes_the_user_op_name_and_is_the_same_in_a_fresh_process(plugins):
    spec = swish_rnn()
    tanh = CellSpec.from_dict({**spec.to_dict(), "nodes": {"a": {"op": "linear", "in": ["x", "h"]},
                                                            "y": {"op": "tanh", "in": ["a"]}}})
    assert tanh.canonical_hash() == known_cell("rnn_tanh").canonical_hash()
    assert spec.canonical_hash() != tanh.canonical_hash()
    # A child process that never imports the plugin still reads the cell: NAS_OP_MODULES names the
    # module that registered swish here (how a spawned pool of final retrainings knows it).
    assert "my_nas_plugin.ops" in os.environ[ops.MODULES_ENV].split(",")
    code = "import sys; from nas.cell import CellSpec; print(CellSpec.from_json(sys.stdin.read()).canonical_hash())"
    p = subprocess.run([sys.executable, "-c", code], input=spec.to_json(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == spec.canonical_hash()


@pytest.mark.parametrize("args, kwargs, error", [
    (("tanh", torch.tanh), {}, "the name is taken \\(a built-in op\\)"),
    (("swish", lambda a: a), {}, "the name is taken \\(registered by my_nas_plugin.ops.swish\\)"),
    (("Bad-Name", torch.tanh), {}, "expected an op name of lower-case letters"),
    (("gelu2", torch.tanh), {"has_weights": True}, "ops with weights are not supported"),
    (("gelu2", torch.tanh, 4), {}, "arity: expected 1, 2 or 3, got 4"),
    (("gelu2", torch.tanh), {"options": {"a": 1.0}}, "option names must be identifiers other than a, b"),
])
def test_register_op_refuses_bad_ops_in_one_line(plugins, args, kwargs, error):
    before = dict(ops.OPS)
    with pytest.raises(ValueError, match=error) as err:
        ops.register_op(*args, **kwargs)
    assert "\n" not in str(err.value)
    assert dict(ops.OPS) == before


def test_registering_the_same_function_again_is_allowed(plugins):
    from my_nas_plugin.ops import swish

    op = ops.register_op("swish", swish, 1, options={"beta": 1.0})
    assert ops.OPS["swish"] is op and ops.is_user_op("swish") and not ops.is_user_op("tanh")


# ---- spaces and controllers in a search ------------------------------------------------------------

def composed(*overrides: str) -> dict:
    """nas-search's config for these command-line overrides, as the CLI resolves it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import nas.cli.search  # noqa: F401 - registers the schema
    from nas.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("search", overrides=list(overrides)), resolve=True)


def test_a_space_and_a_controller_by_dotted_path_in_a_real_search(plugins, corpus, tmp_path):
    cfg = composed("search_space=custom", "search_space.module=my_nas_plugin.space", "controller=custom",
                   "controller.name=my_nas_plugin.samplers.CyclingSampler", "n_trials=2", "workers=1",
                   f"out_dir={tmp_path / 'study'}", *(f"trainer.{k}={'null' if v is None else v}" for k, v in TINY.items()),
                   f"data.path={corpus['path']}", f"data.cache_dir={corpus['cache_dir']}", "baselines=[]",
                   "pruner=none", "tracking.enabled=false", "report.enabled=false", "export.enabled=false",
                   "trainer.param_budget=null")  # hidden_size 16: an unbounded swish RNN 200 wide diverges
    assert cfg["study"] == "custom-my_nas_plugin.samplers.CyclingSampler"
    outcome = search(cfg, progress=False)
    study, stored = join_study(outcome.study_name, None, cfg["out_dir"])
    assert stored["search_space"] == {"name": "custom", "options": {}, "module": "my_nas_plugin.space"}
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    # the user's sampler chose: choice n of each decision in trial n
    assert [t.params for t in trials] == [{"act": "swish", "gated": False}, {"act": "tanh", "gated": True}]
    assert all(t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value) for t in trials), [(t.state, t.user_attrs.get("nas_state"), t.user_attrs.get("reason")) for t in trials]
    assert trials[0].user_attrs["cell_hash"] == swish_rnn().canonical_hash()  # the user op's cell trained


def test_a_space_by_dotted_path_in_its_name(plugins):
    cfg = composed("search_space=custom", "search_space.name=my_nas_plugin.space")
    assert cfg["study"] == "my_nas_plugin.space-evolution"
    space = get_space(cfg["search_space"]["name"], **cfg["search_space"]["options"])
    assert space.sample(optuna.trial.FixedTrial({"act": "swish", "gated": False})) == swish_rnn()


def test_the_custom_groups_ask_for_a_name(plugins):
    with pytest.raises(ValueError, match="search_space=custom needs your space: search_space.module=my_pkg"):
        get_space(composed("search_space=custom")["search_space"]["name"])
    with pytest.raises(ValueError, match="controller=custom needs your controller: controller.name=my_pkg"):
        make_sampler(composed("controller=custom")["controller"]["name"])


def test_objects_through_the_python_api(plugins, corpus, tmp_path):
    from my_nas_plugin.samplers import CyclingSampler
    from my_nas_plugin.space import sample

    def only_gated(trial):  # a local function: this process only
        return sample(trial, acts=["tanh", "sigmoid"])

    settings = {"trainer": TINY, "data": corpus, "out_dir": str(tmp_path / "study"), **QUIET}
    outcome = run_search(only_gated, CyclingSampler(seed=0, start=1), n_trials=1, progress=False, **settings)
    study, cfg = join_study(outcome.study_name, None, str(tmp_path / "study"))
    assert (cfg["search_space"]["name"], cfg["controller"]["name"]) == ("only_gated", "CyclingSampler")
    assert study.trials[0].params == {"act": "sigmoid", "gated": True}
    # importable functions and classes travel to workers by their dotted path
    cfg = search_config(sample, CyclingSampler, n_trials=1, workers=2, **settings)
    assert cfg.search_space.name == "my_nas_plugin.space.sample"
    assert cfg.controller.name == "my_nas_plugin.samplers.CyclingSampler"
    with pytest.raises(ValueError, match="workers=2: the space and the sampler cannot be imported by worker"):
        search_config(only_gated, CyclingSampler(), workers=2, **settings)
    with pytest.raises(ValueError, match="run_search: unknown setting\\(s\\) trials"):
        search_config(sample, "tpe", trials=3)
    with pytest.raises(ValueError, match="trainer: unknown field\\(s\\) step;"):
        search_config(sample, "tpe", trainer={"step": 3})


def test_two_workers_import_the_users_modules(plugins, corpus, tmp_path):
    out_dir = tmp_path / "study"
    outcome = run_search("my_nas_plugin.space", "my_nas_plugin.samplers.make_sampler", n_trials=2, workers=2,
                         trainer=TINY, data=corpus, out_dir=str(out_dir), progress=False, **QUIET)
    study, _ = join_study(outcome.study_name, None, str(out_dir))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and swish_rnn().canonical_hash() in {t.user_attrs["cell_hash"] for t in done}


# ---- entry points ----------------------------------------------------------------------------------

ENTRY_POINTS = """\
[nas.search_spaces]
gated_act = my_nas_plugin.space

[nas.controllers]
cycling = my_nas_plugin.samplers:CyclingSampler
broken = my_nas_plugin.no_such_module:Sampler

[nas.ops]
more = my_nas_plugin.more_ops:register
"""


def test_entry_points_add_a_space_a_controller_and_an_op(plugins, tmp_path, monkeypatch):
    dist = tmp_path / "site" / "my_nas_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nas-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(ops._plugins, "entry_points_loaded", False)
    space = get_space("gated_act", acts=["tanh"])
    assert space.name == "gated_act" and space.known == {"rnn_tanh": {"act": "tanh", "gated": False}}
    assert isinstance(make_sampler("cycling", seed=0, start=3), optuna.samplers.RandomSampler)
    with pytest.raises(ValueError, match="plugin broken = my_nas_plugin.no_such_module:Sampler .*cannot load"):
        make_sampler("broken")
    # `cube` is registered by the entry point's function, on the first lookup of an unknown op
    cube = {"state": ["h"], "nodes": {"a": {"op": "linear", "in": ["x", "h"]}, "y": {"op": "cube", "in": ["a"]}},
            "outputs": {"h": "y"}}
    assert CellSpec.from_json(json.dumps(cube)).node("y").op == "cube"
    with pytest.raises(CellError, match="unknown op 'kube'.*cube"):
        CellSpec.from_json(json.dumps(cube).replace('"cube"', '"kube"'))


# ---- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error", [
    (lambda: get_space("no.such.module"), "search_space.name: cannot import no.such.module: No module named 'no'"),
    (lambda: get_space("my_nas_plugin.nope"), "search_space.name: cannot import my_nas_plugin.nope: my_nas_plugin has no"),
    (lambda: get_space("my_nas_plugin.samplers"), "search_space.name: 'my_nas_plugin.samplers' is not a search space"),
    (lambda: get_space("my_nas_plugin.space", act=["tanh"]), "unknown option\\(s\\) \\['act'\\]"),
    (lambda: make_sampler("no.such.module"), "controller.name: cannot import no.such.module: No module named 'no'"),
    (lambda: make_sampler("my_nas_plugin.samplers.not_a_sampler"), "made a int, expected an optuna.samplers"),
    (lambda: make_sampler("my_nas_plugin.samplers.CyclingSampler", stat=2), "takes no option\\(s\\) stat"),
])
def test_bad_paths_and_options_are_one_line_errors(plugins, make, error):
    with pytest.raises(ValueError, match=error) as err:
        make()
    assert "\n" not in str(err.value)


def test_the_cli_answers_a_bad_path_in_one_line(tmp_path):
    exe = shutil.which("nas-search")
    assert exe, "nas-search is not installed"
    p = subprocess.run([exe, "search_space.name=no.such.module"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [
        "nas-search: error: search_space.name: cannot import no.such.module: No module named 'no'"], p.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_export_of_a_user_op_cell_names_what_it_needs(plugins, tmp_path):
    import my_nas_plugin.ops  # noqa: F401 - registers swish

    from nas.export import export_cell

    out = export_cell(swish_rnn(), tmp_path / "swish", speed=False)
    card, module = (out / "README.md").read_text(), (out / "swish_rnn.py").read_text()
    assert "needs only torch" not in card and "needs torch, nas-rnn and my_nas_plugin.ops" in card
    assert "Standalone" not in module and "Needs torch, nas-rnn and my_nas_plugin.ops" in module
    assert "needs only torch" in (export_cell(known_cell("gru"), tmp_path / "gru", speed=False)
                                  / "README.md").read_text()
