"""Whether the generated kernels work here: checked once, before the first real cell uses them.

A cell with every op trains for one step with the kernels; a GPU or driver that Triton cannot
compile for, a missing C compiler or a broken install costs a warning and the torch kernels, not a
crash in the middle of a search. The C kernels' probe also compares the outputs and gradients with
the torch code's, so a compiler that miscompiles them is caught too; the time loop in C has a probe
of its own, so where only it fails, the kernels run from the Python loop.

Whatever mode the first real call runs in (inference_mode, no_grad, autocast), the probe trains;
and it leaves the random number generators as it found them (seeded runs stay reproducible).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import threading
import warnings
from functools import cache

import torch

from nas.cell.spec import CellSpec
from nas.compile.backends.c import loop as cloop

PROBE = {"state": ["h", "c"], "nodes": {
    "a": {"op": "linear", "in": ["x", "h"]}, "g": {"op": "sigmoid", "in": ["a"]},
    "t": {"op": "tanh", "in": ["c"]}, "r": {"op": "relu", "in": ["a"]},
    "l": {"op": "leaky_relu", "in": ["t"]}, "s": {"op": "sub", "in": ["r", "l"]},
    "m": {"op": "mean", "in": ["s", "g"]}, "b": {"op": "blend", "in": ["g", "m", "h"]},
    "p": {"op": "mul", "in": ["b", "t"]}, "q": {"op": "add", "in": ["p", "c"]},
    "i": {"op": "identity", "in": ["q"]}}, "outputs": {"h": "b", "c": "i"}}

_probing: set = set()  # the probes running now (their own calls use the kernels unchecked)
_lock = threading.RLock()


def triton_works(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the generated Triton kernels compile and run on `device` in `dtype` (checked once,
    by training the probe cell for one step there; not during a CUDA graph capture)."""
    if device in _probing:
        return True  # the probe itself runs them
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False  # a probe would break the caller's capture: the torch kernels, this once
    return _probe(device, dtype)


def c_works(dtype: torch.dtype, loop: bool = False) -> bool:
    """Whether the C kernels compile here and compute what the torch code computes, in `dtype`;
    with `loop`, whether they also do with the time loop in C (nas.compile.backends.c.loop). The loop has its own
    probe, so a loop that fails costs only itself: the kernels then run from the Python loop."""
    if ("c", dtype, threading.get_ident()) in _probing:
        return True  # the probe's own calls (other threads wait for its verdict in _c_probe)
    with _lock:
        # Where the loop cannot run in C (no MKL to call), its program is the Python loop's.
        return _c_probe(dtype, loop and cloop.available(dtype))


@contextlib.contextmanager
def _probing_as(key, device: torch.device):
    _probing.add(key)
    forked = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=forked), \
                torch.autocast(device.type, enabled=False):
            yield
    finally:
        _probing.discard(key)


def _train(model, x) -> list[torch.Tensor]:
    """One forward and backward: the outputs, final states and parameter gradients."""
    out, final = model(x)
    (out.sum() + sum((f * f).sum() for f in final)).backward()
    return [t.detach() for t in (out, *final, *(p.grad for p in model.parameters()))]


@cache
def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from nas.compile.modules import CellRNN

    try:
        with _probing_as(device, device):
            rnn = CellRNN(CellSpec.from_dict(PROBE), 16, 16).to(device, dtype)
            for layer in rnn.layers:
                layer.cuda_graphs = False
            _train(rnn, torch.randn(3, 2, 16, device=device, dtype=dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - any failure means: do not use them
        warnings.warn(f"nas: the Triton kernels do not run on {device} in {dtype} ({type(err).__name__}: "
                      f"{err}); using the torch kernels instead", RuntimeWarning, stacklevel=3)
        return False
    return True


@cache
def _c_probe(dtype: torch.dtype, loop: bool) -> bool:
    error = _c_trial(dtype, loop)
    if error is None:
        return True
    if not loop:
        warnings.warn(f"nas: the C kernels do not work here in {dtype} ({error}); CPU cells run the torch "
                      f"kernels instead (slower; NAS_C_KERNELS=0 silences this)", RuntimeWarning, stacklevel=3)
    elif _c_probe(dtype, False):  # (else that probe's warning says it all)
        warnings.warn(f"nas: the C time loop does not work here in {dtype} ({error}); the C kernels run from a "
                      f"Python loop instead (slower; NAS_C_LOOP=0 silences this)", RuntimeWarning, stacklevel=3)
    return False


def _c_trial(dtype: torch.dtype, loop: bool) -> str | None:
    """Train the probe cell one step with the C kernels (and `loop`) and with the torch code: None
    when they agree, else what went wrong, in one line."""
    from nas.compile.modules import CellRNN
    from nas.compile.sequence.function import c_program, force

    cpu = torch.device("cpu")
    try:
        with _probing_as(("c", dtype, threading.get_ident()), cpu), warnings.catch_warnings():
            # c_program's warning that the compiler failed: here, the probe's failure.
            warnings.filterwarnings("error", message="nas: could not compile", category=RuntimeWarning)
            spec = CellSpec.from_dict(PROBE)
            prog = c_program(spec, dtype, loop)
            if prog is None:
                raise RuntimeError("no C form of the probe cell")
            rnn = CellRNN(spec, 16, 16, num_layers=2).to(cpu, dtype)
            ref = copy.deepcopy(rnn)
            for layer, ref_layer in zip(rnn.layers, ref.layers, strict=True):
                force(layer, prog, dtype)  # this program, whatever NAS_C_LOOP or NAS_C_KERNELS say
                ref_layer.c_kernels = False
            x = torch.randn(5, 3, 16, dtype=dtype)
            got, want = _train(rnn, x), _train(ref, x)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        worst = max(float((a - b).abs().max() / (b.abs().max() + 1)) for a, b in zip(got, want))
        if not worst < tol:
            raise RuntimeError(f"they differ from the torch code's results by {worst:.2g} (relative)")
    except Exception as err:  # noqa: BLE001 - any failure means: do not use them
        message = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {message}"
    return None
