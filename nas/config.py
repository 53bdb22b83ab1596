"""Typed configuration schemas: the Hydra configs in conf/ are validated against these dataclasses,
so a typo in an override fails when the config is composed, before any work starts.

This module imports nothing heavy (no torch): the CLIs compose their config before loading torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

# `${nas.mul:a,b}` in conf/: a setting that scales with another (the final comparison's steps with
# the search's, so that a quick `trainer.steps=20` search is not followed by 600-step retrainings).
if not OmegaConf.has_resolver("nas.mul"):
    OmegaConf.register_new_resolver("nas.mul", lambda a, b: int(a) * int(b))


@dataclass
class DataConfig:
    """Corpus: a UTF-8 text file (split 90/5/5), a folder with train/valid/test files, or None for
    the packaged Tiny Shakespeare. `cache_dir` holds the encoded arrays (None: $NAS_CACHE_DIR or
    runs/cache)."""

    path: Optional[str] = None
    cache_dir: Optional[str] = None
    # How a text becomes symbols (nas.data.FORMATS): chars (one symbol per character), bytes (one per
    # byte: enwik8), spaced (characters separated by spaces, one sentence a line, as PTB's char files:
    # every non-space character is a symbol and each line ends with one end-of-line symbol, the
    # separator spaces are no symbols; the published char-PTB protocol). auto: bytes for a file named
    # enwik8, spaced for a folder of ptb.char.{train,valid,test}.txt, chars otherwise.
    format: str = "auto"

    def check(self) -> None:
        """Raise a one-line ValueError for a setting that cannot work (torch-free; callable on an
        OmegaConf node too: DataConfig.check(node))."""
        formats = ("auto", "chars", "bytes", "spaced")
        if self.format not in formats:
            raise ValueError(f"data.format: expected one of {', '.join(formats)}, got {self.format!r}")


# The trainer's settings that change speed or display, never a score: left out of a budget's identity
# (nas.search.objective.budget_key), and free to change when a study resumes (nas.search.study).
SPEED_ONLY = frozenset({"device", "threads", "progress", "tf32", "bf16", "eval_batch_size", "backend",
                        "cuda_graphs"})
BACKENDS = ("auto", "torch", "c", "triton")  # TrainConfig.backend, nas.compile.backends.policy
CUDA_GRAPHS = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """How one cell is trained and scored. Every cell of a search gets the same TrainConfig.

    Budget: training stops at `steps` optimizer steps, or earlier when `tokens` characters have been
    consumed or `seconds` of wall time have passed (each optional). The lr schedule runs over `steps`.
    Size: `hidden_size`, unless `param_budget` is set: then each cell's hidden size is chosen so that
    its whole model has about that many parameters (fair comparison of cells of different width).
    Data order: B contiguous streams of the training split; with `seed_data_order` the seed also
    rotates the split by a seed-drawn circular offset before it is cut, so seeds differ in what each
    stream reads as well as in the initialisation (every cell sees the same order for one seed).
    State carry: no state is carried much further than `state_span` characters from a zero state,
    in training (each stream restarts from zero every state_span // seq_len chunks, the B streams
    staggered) as in scoring, so a score never asks a cell for a state regime training did not
    show it (an LSTM trained on endless streams scored 3.55 bpc from zero states, 3.39 carried).
    Scores (nas.lm.split_bpc): a split is scored as consecutive segments of `state_span`
    characters, each read from a zero state after a burn-in of the `eval_burn_in` characters before
    it (read, not scored), every character once; `eval_batch_size` only sets how many segments run
    at once, so it does not change the score. Intermediate evaluations score
    `eval_chars` worth of whole segments spread evenly over the validation split, the final ones
    `final_eval_chars` worth (None: the whole split).
    Divergence: a NaN/inf loss or gradient, a training loss above `max_bpc`, or a validation (or
    test) score above the uniform bound log2(vocabulary) or more than `max_val_gap` bits above the
    training loss of the same moment ends the run as diverged, with the reason, never a score.
    """

    steps: int = 300
    tokens: Optional[int] = None
    seconds: Optional[float] = None
    batch_size: int = 32
    seq_len: int = 64
    hidden_size: int = 256          # at most 8192 (the widest model check() accepts)
    param_budget: Optional[int] = None
    embedding_size: Optional[int] = None  # None: hidden_size
    num_layers: int = 1
    dropout: float = 0.0
    tie_weights: bool = True
    optimizer: str = "adam"          # adam | sgd
    lr: float = 1e-2
    momentum: float = 0.0           # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"     # constant | cosine | linear (decay to lr_final_ratio * lr)
    lr_final_ratio: float = 0.1
    warmup_steps: int = 0
    clip_norm: float = 1.0
    seed_data_order: bool = True    # the seed also picks the training split's circular offset
    max_bpc: float = 100.0          # a training loss above this (uniform guessing: log2(V) ~ 6) is divergence
    max_val_gap: float = 1.5        # val bpc this many bits above the train bpc is divergence
    eval_every: int = 100           # intermediate val bpc (reported to the callback)
    state_span: int = 2048          # longest state carry from zero (training chunks, scored segments)
    eval_burn_in: int = 128         # characters read, not scored, before each scored segment
    eval_chars: Optional[int] = 20000  # intermediate evals: this many val chars (whole segments); None = all
    final_eval_chars: Optional[int] = None  # final val/test evals: this many chars; None = the whole split
    eval_batch_size: int = 16       # segments scored at once: speed only, not the score
    test: bool = False              # also compute test bpc at the end
    device: str = "auto"            # auto | cpu | mps | cuda | cuda:N
    threads: Optional[int] = None   # torch CPU threads; None = torch's default
    # The cell's generated code (nas.compile.backends.policy): speed only, not the score.
    backend: str = "auto"           # auto | torch | c | triton
    cuda_graphs: str = "auto"       # auto | on | off
    tf32: bool = False
    bf16: bool = False              # bf16 autocast (GPU)
    progress: Optional[bool] = None  # None = only when stderr is a terminal
    sample_chars: int = 300
    temperature: float = 0.8

    def check(self) -> None:
        """Raise a one-line ValueError naming the field, what was expected and what came, for any
        setting that cannot work. Torch-free, so CLIs call it before loading torch; it reads only
        attributes, so TrainConfig.check(node) works on an OmegaConf node too."""
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"trainer.{name}: expected {expected}, got {getattr(self, name)!r}")

        width = 8192  # an LSTM this wide has ~0.5 G parameters (8 GB with Adam's float32 state)
        ints = {"steps": 1, "batch_size": 1, "seq_len": 1, "hidden_size": 1, "num_layers": 1,
                "eval_every": 1, "state_span": 1, "eval_burn_in": 0, "eval_batch_size": 1,
                "warmup_steps": 0, "sample_chars": 0, "tokens": 1, "param_budget": 1, "embedding_size": 1,
                "eval_chars": 1, "final_eval_chars": 1, "threads": 1}
        optional = {"tokens", "param_budget", "embedding_size", "eval_chars", "final_eval_chars",
                    "threads"}
        for name, low in ints.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(name, f"an integer >= {low}" + (" or None" if name in optional else ""))
        for name in ("hidden_size", "embedding_size"):
            if (getattr(self, name) or 0) > width:
                fail(name, f"at most {width} (the widest model accepted)")
        # (low, low included, high, high included); None: unbounded. NaN and inf are refused.
        floats = {"lr": (0, False, None, False), "momentum": (0, True, 1, False),
                  "weight_decay": (0, True, None, False), "lr_final_ratio": (0, True, 1, True),
                  "clip_norm": (0, False, None, False), "max_bpc": (0, False, None, False),
                  "max_val_gap": (0, False, None, False), "dropout": (0, True, 1, False),
                  "temperature": (0, False, None, False), "seconds": (0, False, None, False)}
        for name, (low, low_in, high, high_in) in floats.items():
            value = getattr(self, name)
            if value is None and name == "seconds":
                continue
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and (value >= low if low_in else value > low)
                  and (high is None or (value <= high if high_in else value < high)))
            if not ok:
                span = (f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                        if high is not None else f"{'>=' if low_in else '>'} {low}")
                fail(name, f"a finite number {span}" + (" or None" if name == "seconds" else ""))
        choices = {"optimizer": ("adam", "sgd"), "lr_schedule": ("constant", "cosine", "linear"),
                   "backend": BACKENDS, "cuda_graphs": CUDA_GRAPHS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, "one of " + ", ".join(allowed))
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device)):
            fail("device", "auto, cpu, mps, cuda or cuda:N")


@dataclass
class SpaceConfig:
    """A search space and its options (e.g. max_nodes). `name`: a built-in space (graph, highway,
    tree), a plugin's entry point name (group nas.search_spaces), or the dotted path of the user's
    module or function (my_pkg.my_space): docs/extending.md."""

    name: str = "graph"
    options: Dict[str, Any] = field(default_factory=dict)
    module: Optional[str] = None       # your own space by dotted path; when given it replaces `name`


@dataclass
class ControllerConfig:
    """A controller (an Optuna sampler: random, tpe, nsga2, evolution, reinforce) and its options.
    `name` may also be a plugin's entry point name (group nas.controllers) or the dotted path of the
    user's sampler class or of a function returning a sampler (my_pkg.MySampler): docs/extending.md."""

    name: str = "tpe"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConfig:
    """none | median | halving (successive halving) | hyperband, on intermediate val bpc."""

    name: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    min_resource: Optional[int] = None  # halving / hyperband: steps before the first rung (None: eval_every)
    reduction_factor: int = 3


@dataclass
class StorageConfig:
    """Where the study lives. url None: a journal file runs/search/<study>/journal.log (one machine);
    an Optuna RDB URL (postgresql://user:pw@host/db, mysql://...) lets workers on several machines
    join. Workers beat every heartbeat_interval s; a running trial silent for grace_period s (or
    whose worker process is gone, on the same host) is failed as lost and retried."""

    url: Optional[str] = None
    heartbeat_interval: int = 20
    grace_period: int = 120


@dataclass
class TrackingConfig:
    """MLflow. uri None: a local SQLite store, runs/mlflow/mlflow.db (artifacts in runs/mlflow/artifacts);
    or any MLflow tracking URI (http://host:5000 for a team server). One experiment per study."""

    enabled: bool = True
    uri: Optional[str] = None
    experiment: Optional[str] = None   # None: "nas/<study>"
    retries: int = 3                   # per call, before buffering and moving on
    timeout: float = 10.0              # seconds per HTTP request to a tracking server


@dataclass
class TrainApp:
    """`nas-train`: train one cell (a reference cell name or a cell JSON file)."""

    cell: str = "lstm"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainConfig = field(default_factory=TrainConfig)
    # its own MLflow run in the same store as the searches (experiment "nas/train" unless given)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class ReportConfig:
    """The final comparison: the top_k new cells and the baselines retrained with `seeds` seeds (for
    `steps` steps, default the search trainer's) and scored on the test split (mean +- std, and paired
    differences with 95% intervals), as a table (markdown, CSV) and plots on the parent run."""

    enabled: bool = True
    top_k: int = 3
    seeds: int = 3
    steps: Optional[int] = None    # the finalists' training steps; None: the search trainer's steps


@dataclass
class ExportConfig:
    """Export the best cell of the search as a standalone PyTorch module (runs/exports/<name>/)."""

    enabled: bool = True
    dir: str = "runs/exports"


@dataclass
class SearchApp:
    """`nas-search`: one study, n_trials trials over `workers` local worker processes."""

    study: str = "${search_space.name}-${controller.name}"
    n_trials: int = 30
    workers: int = 1           # local worker processes; 0: only create the study and wait for nas-worker
    # k worker processes per device, replacing `workers` when set: k x n_gpus on a machine with GPUs
    # (worker i on GPU i mod n_gpus, so k share each), k on a CPU-only machine
    workers_per_device: Optional[int] = None
    seed: int = 0
    device: str = "auto"       # per worker: auto = GPU (worker i on GPU i mod n_gpus) if any, else CPU
    threads: Optional[int] = None  # torch threads per CPU worker; None: 1 when workers > 1
    out_dir: str = "runs/search/${study}"
    baselines: List[str] = field(default_factory=lambda: ["lstm", "gru", "mut1", "mut2", "mut3"])
    # cells the evolution controller starts from besides the space's reference cells: cell JSON or
    # NAS-Bench-NLP recipe files, or reference cell names; each must be expressible in the space
    seed_cells: List[str] = field(default_factory=list)
    search_space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class WorkerApp:
    """`nas-worker`: join an existing study (created by nas-search) and run its trials."""

    study: str = "???"
    storage: StorageConfig = field(default_factory=StorageConfig)
    out_dir: str = "runs/search/${study}"
    device: str = "auto"
    threads: Optional[int] = None
    replica: int = 0           # this worker's index in a multirun sweep: GPU = replica mod n_gpus
    # k worker processes per device of this machine (k x n_gpus, or k on the CPU) instead of this one
    workers_per_device: Optional[int] = None


@dataclass
class ReportApp:
    """`nas-report`: compare the best cells of study `study` with the baselines on the test split."""

    study: str = "???"
    storage: StorageConfig = field(default_factory=StorageConfig)
    out_dir: str = "runs/search/${study}"
    baselines: Optional[List[str]] = None   # None: the study's
    workers: Optional[int] = None           # retrain processes; None: the study's
    device: str = "auto"
    threads: Optional[int] = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class ExportApp:
    """`nas-export`: write a cell as a standalone PyTorch module. The cell comes from (first given wins):
    `cell` (a reference cell name, a cell JSON or NAS-Bench-NLP recipe file, or a training run folder:
    the cell with its whole trained model), `run_id` (an MLflow run of a trial), or the study `study`:
    trial `trial`, the trial with `cell_hash`, or else its best trial."""

    study: Optional[str] = None
    trial: Optional[int] = None
    cell_hash: Optional[str] = None
    run_id: Optional[str] = None
    cell: Optional[str] = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    study_dir: Optional[str] = None    # the journal study's folder; None: runs/search/<study>
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    name: Optional[str] = None         # module name; default from the study/trial or the cell
    dest: Optional[str] = None         # folder; default runs/exports/<name>
    overwrite: bool = False


def search_app(cfg: SearchApp | Mapping[str, Any]) -> SearchApp:
    """The typed search config: `cfg` itself when it is a SearchApp, else its plain form (the JSON
    stored with a study as `nas:config`, or a dict of some of its settings) over SearchApp's
    defaults. The one place a stored config becomes typed again: settings a study of an older version
    lacks get their defaults, and keys this version no longer has are dropped, so old studies load."""
    if isinstance(cfg, SearchApp):
        return cfg
    node = OmegaConf.merge(OmegaConf.structured(SearchApp), _known(SearchApp, cfg))
    return OmegaConf.to_object(node)


def plain(app: Any) -> dict[str, Any]:
    """A config dataclass as the plain dict stored with a study and logged as params (the same
    JSON as Hydra's resolved config)."""
    return dataclasses.asdict(app)


def _known(schema: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The items of `data` that are fields of the dataclass `schema` (recursively into sections)."""
    kinds = {f.name: f.default_factory for f in dataclasses.fields(schema)}
    out = {}
    for key, value in data.items():
        if key not in kinds:
            continue
        kind = kinds[key]
        section = isinstance(kind, type) and dataclasses.is_dataclass(kind)
        out[key] = _known(kind, value) if section and isinstance(value, Mapping) else value
    return out
