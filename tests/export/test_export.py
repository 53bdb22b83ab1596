"""Tests of nas.export: the exported module matches CellRNN in a fresh interpreter without the project,
passes ruff and pyflakes, compiles with torch.jit.script / torch.export, and refuses hostile specs."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from nas.cell import KNOWN_CELLS, OPS, CellError, CellSpec, Node, known_cell
from nas.cell.known import f, lin
from nas.compile import CellRNN
from nas.compile.plan import lower
from nas.export import ExportError, export_cell, generate_module

# Valid node names that collide with keywords, builtins, ruff's E741 or names the generated code uses.
AWKWARD = ["lambda", "self", "torch", "F", "H", "state", "x_w", "h_w", "range", "l", "__init__", "zeros",
           "Tensor", "None", "v", "s", "t", "i", "bias", "weight_x", "match", "_"]
STATES = [("h",), ("h", "c"), ("h", "c", "m"), ("out", "lambda", "state")]
OP_CHOICES = ["linear"] * 4 + ["add", "sub", "mul", "blend", "mean", "tanh", "sigmoid", "relu",
                               "leaky_relu", "identity"]


def pick(rng: random.Random, avail: list[str]) -> str:
    """Mostly recent values, so that a random cell is deep rather than pruned away."""
    return avail[-1 - min(int(rng.expovariate(0.6)), len(avail) - 1)]


def random_cell(seed: int) -> CellSpec:
    """A random valid cell: 1-3 state vectors, every op, awkward node names."""
    rng = random.Random(seed)
    state = STATES[seed % len(STATES)]
    for _ in range(200):
        avail = ["x", *state]
        names = [n for n in rng.sample(AWKWARD, 4) if n not in state] + [f"n{j}" for j in range(12)]
        nodes: dict = {}
        for name in names[:rng.randint(5, 11)]:
            op = rng.choice(OP_CHOICES)
            if op == "linear":
                ins = rng.sample(avail, rng.randint(1, min(3, len(avail))))
                entry = lin(*ins, bias=rng.random() < 0.7, bias_init=rng.choice([0.0, 1.0, -0.5]))
            else:
                lo, hi = OPS[op].arity
                entry = f(op, *[pick(rng, avail) for _ in range(rng.randint(lo, hi or 4))])
                if op == "leaky_relu":
                    entry["negative_slope"] = rng.choice([0.01, 0.2])
            nodes[name] = entry
            avail.append(name)
        outputs = {state[0]: avail[-1], **{s: rng.choice(avail[1:]) for s in state[1:]}}
        try:
            return CellSpec.from_dict({"name": f"rand{seed}", "state": list(state), "nodes": nodes,
                                       "outputs": outputs})
        except CellError:
            continue
    raise AssertionError(f"no valid random cell for seed {seed}")


CASES = [(name, known_cell(name)) for name in KNOWN_CELLS] + [(f"rand{i}", random_cell(i)) for i in range(20)]


def test_random_cells_cover_the_ops_and_three_state_vectors():
    ops = {n.op for _, spec in CASES for n in spec.nodes}
    assert {"relu", "leaky_relu", "mean", "blend", "sub", "linear"} <= ops
    assert sum(len(spec.state) == 3 for _, spec in CASES) >= 4
    assert any(n.name in AWKWARD for _, spec in CASES for n in spec.nodes)


def sizes(spec: CellSpec, k: int) -> tuple[int, int, int]:
    hidden = 4
    return (hidden if lower(spec).needs_raw_x else 3), hidden, 1 + k % 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported with random float64 weights, plus reference outputs of CellRNN."""
    root = tmp_path_factory.mktemp("export")
    manifest = []
    for k, (name, spec) in enumerate(CASES):
        I, H, L = sizes(spec, k)
        batch_first = k % 3 == 1
        torch.manual_seed(k)
        rnn = CellRNN(spec, I, H, num_layers=L, batch_first=batch_first).double().eval()
        with torch.no_grad():
            for p in rnn.parameters():
                p.normal_(0.0, 0.5)
        x = torch.randn(5, 2, I, dtype=torch.float64)
        x = x.transpose(0, 1) if batch_first else x
        state = tuple(torch.randn(L, 2, H, dtype=torch.float64) for _ in spec.state)
        x_step, state_step = torch.randn(2, I, dtype=torch.float64), tuple(s[0] for s in state)
        with torch.no_grad():
            out, final = rnn(x, state)
            out_zero, final_zero = rnn(x)
            step = rnn.layers[0](x_step, state_step)
        ref = {"x": x, "state": state, "out": out, "final": final, "out_zero": out_zero,
               "final_zero": final_zero, "x_step": x_step, "state_step": state_step, "step": step}
        torch.save(ref, root / f"{name}.ref.pt")
        torch.save(rnn.state_dict(), root / f"{name}.cellrnn.pt")
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(sys.modules, "nas.cell.draw", None)  # no pictures here: test_picture draws one
            folder = export_cell(spec, root / name, weights=rnn.state_dict(), metrics={"bpc": 1.5},
                                 origin={"study": "test"}, speed=False)
        classes = re.findall(r"^class (\w+)\(nn.Module\)", (folder / f"{name}.py").read_text(), re.MULTILINE)
        manifest.append({"name": name, "folder": str(folder), "cell": classes[0], "rnn": classes[1], "I": I,
                         "H": H, "L": L, "batch_first": batch_first, "root": str(root)})
    return manifest


# Runs in `python -I -S -B`: no site-packages, no .pth files, so the editable install of the project is
# invisible; only torch's folder is added back. It checks every exported module against CellRNN.
CHECK = r"""
import importlib, importlib.util, json, os, sys
sys.path.append(sys.argv[2])
assert importlib.util.find_spec("nas") is None, "the project is importable"
import torch

def close(a, b):
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(close(u, v) for u, v in zip(a, b))
    # rtol and equal_nan: some random cells grow to 1e9 or overflow, in CellRNN and export alike
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=1e-9, equal_nan=True)

failures, cases = [], json.load(open(sys.argv[1]))
for c in cases:
    sys.path.insert(0, c["folder"])
    module = importlib.import_module(c["name"])
    ref = torch.load(os.path.join(c["root"], c["name"] + ".ref.pt"), weights_only=True)
    cellrnn = torch.load(os.path.join(c["root"], c["name"] + ".cellrnn.pt"), weights_only=True)
    rnn = getattr(module, c["rnn"])(c["I"], c["H"], num_layers=c["L"], batch_first=c["batch_first"])
    rnn.double().eval().load_state_dict(cellrnn)
    with torch.no_grad():
        if not close(rnn(ref["x"], ref["state"]), (ref["out"], ref["final"])):
            failures.append(c["name"] + ": sequence with a state")
        rnn.load_state_dict(torch.load(os.path.join(c["folder"], "weights.pt"), weights_only=True))
        if not close(rnn(ref["x"]), (ref["out_zero"], ref["final_zero"])):
            failures.append(c["name"] + ": sequence from weights.pt, zero state")
        cell = getattr(module, c["cell"])(c["I"], c["H"]).double()
        cell.load_state_dict({k[9:]: v for k, v in cellrnn.items() if k.startswith("layers.0.")})
        if not close(cell(ref["x_step"], ref["state_step"]), ref["step"]):
            failures.append(c["name"] + ": one step")
    if c["name"] == "lstm":  # the README's usage snippet runs as written
        readme = open(os.path.join(c["folder"], "README.md")).read()
        os.chdir(c["folder"])
        exec(readme.split("```python")[1].split("```")[0], {})
print(json.dumps({"checked": len(cases), "failures": failures}))
"""


def test_exported_modules_match_cellrnn_without_the_project(exported, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(exported))
    torch_dir = os.path.dirname(os.path.dirname(torch.__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", CHECK, str(manifest), torch_dir],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"checked": len(exported), "failures": []}


def test_generated_files_pass_ruff_and_pyflakes(exported):
    files = [os.path.join(c["folder"], c["name"] + ".py") for c in exported]
    ruff = shutil.which("ruff") or pytest.skip("ruff is not installed")
    for args in (["--isolated"], ["--isolated", "--select", "E,F,W", "--line-length", "110"]):
        proc = subprocess.run([ruff, "check", "--no-cache", *args, *files], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and not proc.stdout, proc.stdout + proc.stderr


def load(case: dict) -> types.ModuleType:
    """Import an exported module under a private name (TorchScript needs it in sys.modules)."""
    name = f"_exported_{case['name']}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(case["folder"], case["name"] + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_cells_and_sequences_script_with_torch_jit(exported):
    for case in exported:
        module, I, H = load(case), case["I"], case["H"]
        cell, rnn = getattr(module, case["cell"])(I, H), getattr(module, case["rnn"])(I, H, num_layers=2)
        x = torch.randn(5, 3, I)
        scripted_cell, scripted_rnn = torch.jit.script(cell), torch.jit.script(rnn)
        assert all(torch.equal(a, b) for a, b in zip(scripted_cell(x[0]), cell(x[0]))), case["name"]
        (out, final), (ref_out, ref_final) = scripted_rnn(x), rnn(x)
        assert torch.allclose(out, ref_out) and all(map(torch.allclose, final, ref_final)), case["name"]


def test_sequence_exports_with_torch_export(exported):
    case = next(c for c in exported if c["name"] == "lstm")
    rnn = getattr(load(case), case["rnn"])(case["I"], case["H"], num_layers=2).eval()
    x = torch.randn(4, 2, case["I"])
    program = torch.export.export(rnn, (x,))
    out, (h, c) = program.module()(x)
    ref_out, (ref_h, ref_c) = rnn(x)
    assert torch.allclose(out, ref_out) and torch.allclose(h, ref_h) and torch.allclose(c, ref_c)


def test_initialisation_and_errors_look_like_cellrnn(exported):
    for case in exported[:len(KNOWN_CELLS)]:
        module, spec = load(case), known_cell(case["name"])
        torch.manual_seed(0)
        ref = CellRNN(spec, case["I"], case["H"], num_layers=2).state_dict()
        torch.manual_seed(0)
        rnn = getattr(module, case["rnn"])(case["I"], case["H"], num_layers=2)
        got = rnn.state_dict()
        assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref), case["name"]
    assert "num_layers=2" in repr(rnn)
    with pytest.raises(ValueError, match=r"expected input with 3 features"):
        rnn(torch.zeros(5, 2, 7))
    with pytest.raises(ValueError, match=r"expected the state \(h,\), got 2 tensors"):
        rnn(torch.zeros(5, 2, 3), (torch.zeros(2, 2, 4),) * 2)


def test_folder_contents_and_model_card(exported):
    case = next(c for c in exported if c["name"] == "lstm")
    folder = Path(case["folder"])
    assert sorted(os.listdir(folder)) == ["README.md", "cell.json", "lstm.py", "weights.pt"]
    assert CellSpec.from_json((folder / "cell.json").read_text()) == known_cell("lstm")
    weights = torch.load(folder / "weights.pt", weights_only=True)
    assert sorted({k.split(".")[1] for k in weights}) == ["0", "1"]
    readme = (folder / "README.md").read_text()
    assert known_cell("lstm").canonical_hash() in readme
    assert "c_new = keep + write" in readme and "i     = σ(i_lin)" in readme
    assert "- study: test" in readme and "| model | bpc |" in readme and "| lstm | 1.5 |" in readme
    assert "LstmRNN(input_size=3, hidden_size=4, num_layers=2)" in readme


def test_model_card_sections_and_picture(tmp_path, monkeypatch):
    spec = known_cell("gru")
    monkeypatch.setitem(sys.modules, "nas.cell.draw", None)  # the drawing module is missing
    readme = (export_cell(spec, tmp_path / "plain", speed=False) / "README.md").read_text()
    assert "## Origin" not in readme and "## Metrics" not in readme and "![" not in readme
    assert "load_state_dict" not in readme

    drawn = []
    fake = types.SimpleNamespace(draw_cell=lambda s, path: (drawn.append(s), path.write_bytes(b"png")))
    monkeypatch.setitem(sys.modules, "nas.cell.draw", fake)
    metrics = {"gru (found)": {"val_bpc": 1.41234, "params": 1024}, "lstm": {"val_bpc": 1.45}}
    out = export_cell(spec, tmp_path / "drawn", name="found_gru", metrics=metrics,
                      origin={"study": "s1", "trial": 7, "controller": "tpe | evolution"}, speed=False)
    readme = (out / "README.md").read_text()
    assert drawn == [spec] and (out / "cell.png").exists() and "![the found_gru cell](cell.png)" in readme
    assert "| model | val_bpc | params |" in readme and "| gru (found) | 1.412 | 1024 |" in readme
    assert "| lstm | 1.45 |  |" in readme and "- controller: tpe \\| evolution" in readme
    assert (out / "found_gru.py").exists() and "class FoundGruRNN(" in (out / "found_gru.py").read_text()


def test_picture_when_the_drawing_module_is_there(tmp_path):
    pytest.importorskip("nas.cell.draw")
    out = export_cell(known_cell("lstm"), tmp_path / "out", speed=False)
    assert (out / "cell.png").stat().st_size > 0
    assert "![the lstm cell](cell.png)" in (out / "README.md").read_text()


def test_bad_output_folder_and_overwrite(tmp_path):
    spec = known_cell("rnn_tanh")
    torch.manual_seed(0)
    weights = CellRNN(spec, 3, 4).state_dict()
    export_cell(spec, tmp_path / "out", weights=weights, speed=False)
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_cell(spec, tmp_path / "out")
    export_cell(spec, tmp_path / "out", overwrite=True, speed=False)
    assert not (tmp_path / "out" / "weights.pt").exists()  # no stale weights from the last export
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_cell(spec, tmp_path / "file", overwrite=True)


def test_weights_that_do_not_fit_are_named(tmp_path):
    spec = known_cell("lstm")
    weights = CellRNN(spec, 3, 4, num_layers=2).state_dict()
    cases = [
        ({k: v for k, v in weights.items() if k != "layers.1.bias"}, r"missing keys \['layers.1.bias'\]"),
        ({**weights, "layers.0.extra": torch.zeros(1)}, r"unexpected keys \['layers.0.extra'\]"),
        ({**weights, "layers.1.weight_h": torch.zeros(16, 5)},
         r"'layers.1.weight_h': expected shape \(16, 4\)"),
        ({"weight": torch.zeros(1)}, "CellRNN state dict"),
        (CellRNN(known_cell("gru"), 3, 4).state_dict(), r"'layers.0.weight_h': expected shape \(12, 3\)"),
    ]
    for bad, message in cases:
        with pytest.raises(ExportError, match=message) as info:
            export_cell(spec, tmp_path / "out", weights=bad)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out").exists()  # checked before anything is written
    with pytest.raises(ExportError, match="metrics must be"):
        export_cell(spec, tmp_path / "out", metrics={"bpc": 1.0, "lstm": {"bpc": 1.2}})


@pytest.mark.parametrize("name", ["x; import os", "os", "torch", "class", "1cell", "a" * 65, "sample", "charlm"])
def test_module_names_are_checked(tmp_path, name):
    with pytest.raises(ExportError, match="module name"):
        export_cell(known_cell("gru"), tmp_path / "out", name=name)


@pytest.mark.parametrize(("label", "module"), [
    ("", "cell"), ("my-cell 2", "my_cell_2"), ("random", "random_cell"), ("2nd", "nd"), ("ñu", "_u"),
    ("evaluate", "evaluate_cell")])
def test_default_module_name_comes_from_the_spec_name(tmp_path, label, module):
    spec = CellSpec.from_dict({**known_cell("gru").to_dict(), "name": label})
    assert (export_cell(spec, tmp_path / "out", speed=False) / f"{module}.py").exists()


HOSTILE = "x); import os #"


def forged(**fields) -> CellSpec:
    """A CellSpec built around its validation, as a hostile caller could."""
    base = {"state": ("h",), "outputs": ("h_new",), "name": "evil",
            "nodes": (Node("a", "linear", ("x", "h"), (("bias", True), ("bias_init", 0.0))),
                      Node("h_new", "leaky_relu", ("a",), (("negative_slope", 0.01),)))}
    spec = object.__new__(CellSpec)
    for key, value in {**base, **fields}.items():
        object.__setattr__(spec, key, value)
    return spec


def test_cellspec_refuses_hostile_names():
    for nodes in ({HOSTILE: f("tanh", "x")}, {"a": f("tanh); import os #", "x")}):
        with pytest.raises(CellError):
            CellSpec.from_dict({"state": ["h"], "nodes": nodes, "outputs": {"h": "a"}})


@pytest.mark.parametrize("fields", [
    {"state": (HOSTILE,)},
    {"outputs": (HOSTILE,)},
    {"nodes": (Node(HOSTILE, "linear", ("x", "h"), (("bias", True), ("bias_init", 0.0))),)},
    {"nodes": (Node("h_new", "linear", ("x", HOSTILE), (("bias", True), ("bias_init", 0.0))),)},
    {"nodes": (Node("h_new", "tanh({a}) + __import__('os').getpid() + {a}", ("x",)),)},
    {"nodes": (Node("h_new", "leaky_relu", ("x",), (("negative_slope", "0.01) + __import__('os')"),)),)},
    {"nodes": (Node("h_new", "leaky_relu", ("x",), (("negative_slope", float("inf")),)),)},
    {"nodes": (Node("h_new", "tanh", ("x",), (("evil", 1.0),)),)},
    {"nodes": (Node("h_new", "add", ("x", "later")), Node("later", "tanh", ("h",)))},
    {"nodes": ("h_new = x",)},
], ids=["state", "output", "node", "operand", "op", "option", "inf", "unknown-option", "order", "not-node"])
def test_generator_refuses_forged_specs(tmp_path, fields):
    assert "class EvilRNN(" in generate_module(forged(), "evil")  # the forging itself works
    with pytest.raises(ExportError):
        generate_module(forged(**fields), "evil")
    with pytest.raises(ExportError):
        export_cell(forged(**fields), tmp_path / "out")
    assert not (tmp_path / "out").exists()
