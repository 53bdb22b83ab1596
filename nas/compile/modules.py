"""Compiling a CellSpec to torch modules shaped like torch.nn.LSTMCell and torch.nn.LSTM.

`compile_cell(spec, input_size, hidden_size)` gives a `CompiledCell` (one step, like LSTMCell);
`CellRNN(spec, input_size, hidden_size, num_layers, dropout, batch_first)` runs whole sequences like
torch.nn.LSTM. Both compute every input-side product for the whole sequence in one matmul before the
time loop, so each step does only the recurrent products (one per state vector read, one per
intermediate node read).

Two paths compute the same function (tests/compile/test_fast_path.py holds them to it):
- the fast path (default, `fused=True`): the whole-sequence code of nas.compile.sequence.forward, run as one
  autograd node per layer with a generated backward (nas.compile.fast_path); under torch.no_grad it keeps
  nothing for backward. Its output may not be modified in place (autograd raises, as for
  torch.nn.LSTM), and it does not support double backward nor a second backward through a
  retained graph (both raise).
- the reference path (`fused=False`): the step code of nas.compile.plan under autograd, op by op.

The fast path's elementwise work is one generated kernel per stage of a step: on a GPU a Triton
kernel (nas.compile.backends.triton; float32/bf16/fp16, when Triton is installed), on the CPU a C function
(nas.compile.backends.c; float32/float64, when a C compiler is found; with MKL, torch's x86-64 wheels,
the time loop runs in C too), and on a GPU a shape seen twice is replayed as CUDA graphs
(nas.compile.backends.cudagraphs). One setting chooses among them (nas.compile.backends.policy):
`backend="auto"|"torch"|"c"|"triton"` and `cuda_graphs="auto"|"on"|"off"`, given to the
constructor or set on a built module (`rnn.backend = "torch"`); "torch" runs the torch kernels (one
call per op). A cell of more than nas.compile.backends.policy.MAX_KERNEL_NODES nodes (128) runs the
torch kernels, with one warning: the compile time of C or Triton kernels grows with the cell (tens of
seconds at 300 nodes), and training should start within seconds.

Parameters of a layer (state_dict names): `weight_x` ((n_x * H, I), all linear terms on x),
`weight_<src>` ((n * H, H), the terms on state vector or node <src>), and `bias` ((n_b * H,), the
biases of the linear nodes that have one, in node order). Weights are initialised like torch.nn.LSTM
(uniform in ±1/sqrt(H)); biases to their node's `bias_init` (0.0 unless the spec says otherwise).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn

from nas.cell.spec import INPUT, CellError, CellSpec
from nas.compile.backends.cudagraphs import GraphCache
from nas.compile.backends.policy import Policy, from_switches
from nas.compile.fast_path import sequence as fused_sequence
from nas.compile.plan import Plan, lower

State = tuple[Tensor, ...]


@lru_cache(maxsize=4096)
def _plan(spec: CellSpec) -> tuple[Plan, object]:
    plan = lower(spec)
    return plan, compile(plan.step_source, f"<cell step {spec.name or 'cell'}>", "exec")


class _PolicyField:
    """One field of a module's backend setting (`self.policy`) as an attribute of its own:
    `rnn.backend = "torch"` replaces the policy with one that differs in that field."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, module, owner=None):
        return self if module is None else getattr(module.policy, self.name)

    def __set__(self, module, value) -> None:
        module.policy = module.policy.replace(**{self.name: value})


class CompiledCell(nn.Module):
    """One step of a cell: `forward(x: (B, I), state=None) -> new state tuple`, each (B, H).

    The first element of the state is the output h. A missing state is zeros. `fused` picks the
    path of `sequence`, `backend` and `cuda_graphs` the fast path's code (see the module docstring;
    `policy` holds both); each can be changed on a built cell.
    """

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, fused: bool = True,
                 backend: str = "auto", cuda_graphs: str = "auto") -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"compile_cell: sizes must be positive, got input_size={input_size}, "
                             f"hidden_size={hidden_size}")
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        self.fused = fused
        self.policy = Policy(backend, cuda_graphs)  # (a ValueError names a bad value)
        self._graphs = GraphCache()
        self.plan = _plan(spec)[0]
        if self.plan.needs_raw_x and input_size != hidden_size:
            raise CellError(f"compile_cell: cell {spec.name or spec.canonical_hash()!r} applies "
                            f"elementwise ops to x, which needs input_size == hidden_size, got "
                            f"input_size={input_size}, hidden_size={hidden_size}")
        self._step = self._make_step()
        self._weights: list[str] = []
        for g in self.plan.groups:
            rows = len(g.bias_rows) * hidden_size
            cols = input_size if g.source == INPUT else hidden_size
            name = f"weight_{g.source}"
            self.register_parameter(name, nn.Parameter(torch.empty(rows, cols)))
            self._weights.append(name)
        biased = [n.name for n in spec.nodes if n.op == "linear" and n.option("bias")]
        self._biased = biased
        self.bias = nn.Parameter(torch.empty(len(biased) * hidden_size)) if biased else None
        self._bias_init = [spec.node(n).option("bias_init") for n in biased]
        self._bias_index = self._make_bias_index(biased)
        self.reset_parameters()

    def _make_step(self):
        namespace = {"torch": torch, "H": self.hidden_size}
        exec(_plan(self.spec)[1], namespace)  # noqa: S102 - the plan's own generated code: no spec text in it
        return namespace["step"]

    # Pickling (torch.save(model)): the generated step function and the CUDA graphs are rebuilt,
    # not stored.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_step", None)
        state.pop("_graphs", None)
        return state

    def __setstate__(self, state: dict) -> None:
        if "policy" not in state:  # pickled when four boolean switches chose the backends
            switches = {k: state.pop(k) for k in ("triton", "c_kernels", "cuda_graphs", "c_loop") if k in state}
            state["policy"] = from_switches(**switches)
        super().__setstate__(state)
        self._step = self._make_step()
        self._graphs = GraphCache()

    backend = _PolicyField()
    cuda_graphs = _PolicyField()
    c_loop = _PolicyField()

    def _make_bias_index(self, biased: list[str]) -> list[Tensor | None]:
        """Per group, the gather index of its bias vector into cat(bias, zeros(H))."""
        H, pad = self.hidden_size, len(biased)
        out = []
        for g in self.plan.groups:
            if not any(adds for _, adds in g.bias_rows):
                out.append(None)
                continue
            blocks = [biased.index(name) if adds else pad for name, adds in g.bias_rows]
            idx = torch.cat([torch.arange(b * H, (b + 1) * H) for b in blocks])
            out.append(idx)
        return out

    def term_weight(self, node: str, source: str) -> Tensor:
        """The weight matrix (a view, (H, in)) that linear node `node` applies to `source`."""
        group = self.plan.group(source)
        rows = [name for name, _ in group.bias_rows] if group else []
        if node not in rows:
            raise KeyError(f"{self.spec.name or 'cell'}: linear node {node!r} does not read {source!r}")
        k, H = rows.index(node), self.hidden_size
        return getattr(self, f"weight_{source}")[k * H:(k + 1) * H]

    def node_bias(self, node: str) -> Tensor | None:
        """The bias (a view, (H,)) of linear node `node`, or None if it has none."""
        if node not in self._biased:
            return None
        k, H = self._biased.index(node), self.hidden_size
        return self.bias[k * H:(k + 1) * H]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name in self._weights:
                getattr(self, name).uniform_(-bound, bound)
            if self.bias is not None:
                # new_tensor: in the bias's dtype and device, so a float64 cell gets bias_init
                # exactly, not rounded through float32.
                self.bias.copy_(self.bias.new_tensor(self._bias_init).repeat_interleave(self.hidden_size))

    def extra_repr(self) -> str:
        return (f"{self.spec.name or 'cell'}, input_size={self.input_size}, "
                f"hidden_size={self.hidden_size}, state={self.spec.state}, "
                f"nodes={len(self.spec.nodes)}, hash={self.spec.canonical_hash()}")

    # -- the pieces both forward paths share -------------------------------------------------
    def _group_params(self) -> tuple[Tensor | None, list[Tensor | None]]:
        """(x-side bias, flat [w, b, w, b, ...] of the per-step groups) for this forward."""
        biases: list[Tensor | None] = []
        if self.bias is not None:
            ext = torch.cat([self.bias, self.bias.new_zeros(self.hidden_size)])
            biases = [None if i is None else ext[i.to(ext.device)] for i in self._bias_index]
        else:
            biases = [None] * len(self._bias_index)
        flat: list[Tensor | None] = []
        x_bias = None
        for g, name, b in zip(self.plan.groups, self._weights, biases):
            if g.source == INPUT:
                x_bias = b
            else:
                flat += [getattr(self, name), b]
        return x_bias, flat

    def check_state(self, state: State | None, batch: int, ref: Tensor) -> State:
        K, H = len(self.spec.state), self.hidden_size
        if state is None:
            zeros = ref.new_zeros(batch, H)
            return (zeros,) * K
        state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        if len(state) != K:
            raise ValueError(f"{type(self).__name__}: expected a state of {K} tensors "
                             f"{self.spec.state}, got {len(state)}")
        for name, s in zip(self.spec.state, state):
            if tuple(s.shape) != (batch, H):
                raise ValueError(f"{type(self).__name__}: expected state {name!r} of shape "
                                 f"({batch}, {H}), got {tuple(s.shape)}")
        return state

    def forward(self, x: Tensor, state: State | None = None) -> State:
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input of shape (B, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        state = self.check_state(state, x.shape[0], x)
        _, final = self.sequence(x.unsqueeze(0), state)
        return final

    def sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        """Run the cell over xs: (T, B, I) from `state`; returns (outputs (T, B, H), final state)."""
        if xs.shape[0] == 0:  # no steps: no outputs, the state as it was
            return xs.new_zeros(0, xs.shape[1], self.hidden_size), tuple(state)
        # One step without gradients (sampling) is cheaper in the step code than with the sequence
        # buffers set up; from two steps on, or with gradients, the fast path wins.
        if self.fused and (xs.shape[0] > 1 or torch.is_grad_enabled()):
            return fused_sequence(self, xs, state)
        return self.reference_sequence(xs, state)

    def reference_sequence(self, xs: Tensor, state: State) -> tuple[Tensor, State]:
        """`sequence` by the step code under autograd: the reference the fast path is tested against."""
        x_bias, flat = self._group_params()
        if self.plan.groups and self.plan.groups[0].source == INPUT:
            xw = torch.nn.functional.linear(xs, self.weight_x, x_bias).unbind(0)
        else:
            xw = (None,) * xs.shape[0]
        raw = xs.unbind(0) if self.plan.needs_raw_x else xw
        step = self._step
        outs = []
        for t in range(xs.shape[0]):
            state = step(xw[t], raw[t], *state, *flat)
            outs.append(state[0])
        return torch.stack(outs), state


def compile_cell(spec: CellSpec, input_size: int, hidden_size: int, fused: bool = True,
                 backend: str = "auto", cuda_graphs: str = "auto") -> CompiledCell:
    """Compile `spec` into a module shaped like torch.nn.LSTMCell (see CompiledCell)."""
    if not isinstance(spec, CellSpec):
        raise TypeError(f"compile_cell: expected a CellSpec, got {type(spec).__name__}")
    return CompiledCell(spec, input_size, hidden_size, fused, backend, cuda_graphs)


class CellRNN(nn.Module):
    """A multi-layer recurrent network of one cell, shaped like torch.nn.LSTM.

    forward(input: (T, B, I) or (B, T, I) if batch_first, state=None)
        -> (output: (T, B, H) or (B, T, H), state: tuple of K tensors (num_layers, B, H)).
    The state tuple follows the spec's state names (LSTM: (h_n, c_n)); one-vector cells get a
    1-tuple. Dropout (if > 0) is applied to the outputs of every layer but the last, as in torch.
    `fused=False` runs the reference path; `backend` and `cuda_graphs` choose the fast path's code
    (see the module docstring), for every layer.
    """

    def __init__(self, spec: CellSpec, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, batch_first: bool = False, fused: bool = True,
                 backend: str = "auto", cuda_graphs: str = "auto") -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CellRNN: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CellRNN: dropout must be in [0, 1), got {dropout}")
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        self.num_layers, self.dropout, self.batch_first = num_layers, dropout, batch_first
        self.layers = nn.ModuleList(
            compile_cell(spec, input_size if i == 0 else hidden_size, hidden_size, fused, backend, cuda_graphs)
            for i in range(num_layers))

    # The setting of every layer (the layers may be given their own).
    @property
    def policy(self) -> Policy:
        return self.layers[0].policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        for layer in self.layers:
            layer.policy = value

    backend = _PolicyField()
    cuda_graphs = _PolicyField()
    c_loop = _PolicyField()

    # These read attributes CellRNN never had (plan, _biased, bias) and raised AttributeError;
    # the parameters live in the per-layer cells.
    def term_weight(self, node: str, source: str, layer: int = 0) -> Tensor:
        """The weight matrix (a view, (H, in)) that linear node `node` of `layer` applies to `source`."""
        return self.layers[layer].term_weight(node, source)

    def node_bias(self, node: str, layer: int = 0) -> Tensor | None:
        """The bias (a view, (H,)) of linear node `node` of `layer`, or None if it has none."""
        return self.layers[layer].node_bias(node)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.spec.name or 'cell'}, {self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, dropout={self.dropout}, batch_first={self.batch_first}")

    def forward(self, input: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        # Check the rank before transposing: transpose(0, 1) of a 1-D input raised IndexError.
        x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        if x.dim() != 3 or x.shape[2] != self.input_size:
            shape = "(B, T, {})" if self.batch_first else "(T, B, {})"
            raise ValueError(f"CellRNN: expected input of shape {shape.format(self.input_size)}, "
                             f"got {tuple(input.shape)}")
        B, K, L = x.shape[1], len(self.spec.state), self.num_layers
        if state is not None:
            state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
            want = (L, B, self.hidden_size)
            if len(state) != K or any(tuple(s.shape) != want for s in state):
                got = [tuple(s.shape) for s in state]
                raise ValueError(f"CellRNN: expected a state of {K} tensors {self.spec.state} of "
                                 f"shape {want}, got {got}")
        finals = []
        for i, layer in enumerate(self.layers):
            s0 = None if state is None else tuple(s[i] for s in state)
            x, last = layer.sequence(x, layer.check_state(s0, B, x))
            finals.append(last)
            if self.dropout and self.training and i < L - 1:
                x = torch.nn.functional.dropout(x, self.dropout, True)
        out = x.transpose(0, 1) if self.batch_first else x
        return out, tuple(torch.stack([f[k] for f in finals]) for k in range(K))
