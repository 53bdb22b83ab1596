"""Typed configuration schemas: the Hydra configs in conf/ are validated against these dataclasses,
so a typo in an override fails when the config is composed, before any work starts.

This module imports nothing heavy (no torch): the CLIs compose their config before loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DataConfig:
    """Corpus: a UTF-8 text file (split 90/5/5), a folder with train/valid/test files, or None for
    the packaged Tiny Shakespeare. `cache_dir` holds the encoded arrays (None: $NAS_CACHE_DIR or
    runs/cache)."""

    path: Optional[str] = None
    cache_dir: Optional[str] = None


@dataclass
class TrainConfig:
    """How one cell is trained and scored. Every cell of a search gets the same TrainConfig.

    Budget: training stops at `steps` optimizer steps, or earlier when `tokens` characters have been
    consumed or `seconds` of wall time have passed (each optional).
    Size: `hidden_size`, unless `param_budget` is set: then each cell's hidden size is chosen so that
    its whole model has about that many parameters (fair comparison of cells of different width).
    """

    steps: int = 300
    tokens: Optional[int] = None
    seconds: Optional[float] = None
    batch_size: int = 32
    seq_len: int = 64
    hidden_size: int = 256
    param_budget: Optional[int] = None
    embedding_size: Optional[int] = None
    num_layers: int = 1
    dropout: float = 0.0
    tie_weights: bool = True
    optimizer: str = "adam"          # adam | sgd
    lr: float = 1e-2
    momentum: float = 0.0           # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "constant"   # constant | cosine | linear (decay to lr_final_ratio * lr)
    lr_final_ratio: float = 0.1
    warmup_steps: int = 0
    clip_norm: float = 1.0
    max_bpc: float = 100.0          # a training loss above this (uniform guessing: log2(V) ~ 6) is divergence
    eval_every: int = 100           # intermediate val bpc (reported to the callback)
    eval_chars: Optional[int] = 20000  # intermediate evals read this many val chars; None = all
    eval_batch_size: int = 16
    test: bool = False              # also compute test bpc at the end
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None   # torch CPU threads; None = torch's default
    tf32: bool = False
    bf16: bool = False              # bf16 autocast (GPU)
    progress: Optional[bool] = None  # None = only when stderr is a terminal
    sample_chars: int = 300
    temperature: float = 0.8


@dataclass
class TrainApp:
    """`nas-train`: train one cell (a reference cell name or a cell JSON file)."""

    cell: str = "lstm"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class SpaceConfig:
    """A search space of search_spaces/ and its options (e.g. max_nodes)."""

    name: str = "graph"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ControllerConfig:
    """A controller (an Optuna sampler: random, tpe, nsga2, evolution, reinforce) and its options."""

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
class ReportConfig:
    """The final comparison: the top_k cells and the baselines retrained with `seeds` seeds and scored
    on the test split (mean +- std), as a table (markdown, CSV) and plots on the parent run."""

    enabled: bool = True
    top_k: int = 3
    seeds: int = 3


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
    seed: int = 0
    device: str = "auto"       # per worker: auto = GPU (worker i on GPU i mod n_gpus) if any, else CPU
    threads: Optional[int] = None  # torch threads per CPU worker; None: 1 when workers > 1
    out_dir: str = "runs/search/${study}"
    baselines: List[str] = field(default_factory=lambda: ["lstm", "gru", "mut1", "mut2", "mut3"])
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


@dataclass
class ExportApp:
    """`nas-export`: write a cell as a standalone PyTorch module. The cell comes from (first given wins):
    `cell` (a reference cell name or a cell JSON file), `run_id` (an MLflow run of a trial), or the
    study `study`: trial `trial`, the trial with `cell_hash`, or else its best trial."""

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
