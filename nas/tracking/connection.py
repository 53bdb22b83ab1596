"""The connection to one tracking store: the only module that imports MLflow.

Every MLflow call goes through `Connection.call`, which retries `retries` times with a short backoff.
When the store stays unreachable, the connection warns once (TrackingWarning and the log) and goes
offline: calls raise `Unavailable` at once (the tracker skips its work), and a probe every
PROBE_INTERVAL s brings it back. Connections are shared per URI within a process (the driver's
tracker and its trial logger), so an outage costs one round of retries and one warning, not one per
tracker.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import warnings

from nas.tracking.server import QUIET_ENV, relocate_artifacts
from nas.urls import redact

log = logging.getLogger("nas.tracking")

PROBE_INTERVAL = 60.0          # seconds offline before the store is tried again
_BACKOFF = (0.5, 1.0, 2.0, 4.0)
# MLflow error codes that mean "this request is wrong", not "the store is unreachable".
_REQUEST_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                   "BAD_REQUEST", "INVALID_STATE", "NOT_FOUND"}


class TrackingWarning(UserWarning):
    """MLflow tracking is unavailable; the search goes on and its results are in the Optuna study."""


class Unavailable(Exception):
    """The tracking store cannot be reached; the caller skips its work (already warned)."""


@functools.cache
def _mlflow():
    """Import MLflow on first use (2-3 s: the CLIs must start fast without it)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)\.")
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow, Metric, Param, RunTag


class Connection:
    """One tracking URI in this process: the client, and whether the store answers."""

    def __init__(self, uri: str, retries: int, timeout: float):
        self.uri, self.retries, self.timeout = uri, retries, timeout
        self.offline_until: float | None = None
        self.warned = False
        self._client = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """A new search tries the store again and warns again."""
        self.offline_until, self.warned = None, False

    def client(self):
        if self._client is None:
            if self.uri.startswith(("http://", "https://")):
                # MLflow's own retries back off for ~4 minutes; ours are short. Set per process.
                os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(self.timeout)))
                os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            relocate_artifacts(self.uri)  # once per process and store, before MLflow reads it
            self._client = _mlflow()[0].MlflowClient(self.uri)
        return self._client

    def call(self, method: str, *args, **kwargs):
        """`MlflowClient.<method>(*args, **kwargs)`, retried; raises Unavailable when the store is down."""
        probing = self.offline_until is not None
        if probing and time.monotonic() < self.offline_until:
            raise Unavailable
        attempts = 1 if probing else self.retries + 1
        for i in range(attempts):
            try:
                out = getattr(self.client(), method)(*args, **kwargs)
            except Exception as e:
                if request_error(e):
                    raise
                error = e
                if i + 1 < attempts:
                    time.sleep(_BACKOFF[min(i, len(_BACKOFF) - 1)])
                continue
            if probing:
                self.offline_until = None
                log.warning("nas: MLflow tracking at %s answers again; missing runs are logged at the "
                            "end of the search", redact(self.uri))
            return out
        self._go_offline(method, error)
        raise Unavailable

    def log_batch(self, run_id: str, params: dict[str, str], metrics: list[tuple[str, float, int, int]],
                  tags: dict[str, str]) -> None:
        """Params, metrics (key, value, timestamp in ms, step) and tags in one log_batch call (MLflow
        splits it into requests of <= 1000)."""
        _, Metric, Param, RunTag = _mlflow()
        self.call("log_batch", run_id, metrics=[Metric(k, v, ms, step) for k, v, ms, step in metrics],
                  params=[Param(k, v) for k, v in params.items()],
                  tags=[RunTag(k, v) for k, v in tags.items()])

    def _go_offline(self, method: str, error: Exception) -> None:
        with self._lock:
            self.offline_until = time.monotonic() + PROBE_INTERVAL
            msg = (f"nas: MLflow tracking at {redact(self.uri)} unreachable ({method}: {_cause(error)}); "
                   "the search goes on, results are in the Optuna study (missing runs are logged when "
                   "it answers)")
            log.warning(msg)
            if not self.warned:
                self.warned = True
                warnings.warn(msg, TrackingWarning, stacklevel=4)


_connections: dict[str, Connection] = {}
_warned: set[str] = set()


def connection(uri: str, retries: int, timeout: float) -> Connection:
    """This process's connection to `uri`, with these retry settings from now on."""
    conn = _connections.get(uri)
    if conn is None:
        conn = _connections[uri] = Connection(uri, retries, timeout)
    conn.retries, conn.timeout = retries, timeout
    return conn


def warn_once(msg: str) -> None:
    """A TrackingWarning (and a log line) the first time this process meets `msg`."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)
        warnings.warn(msg, TrackingWarning, stacklevel=3)


def request_error(e: Exception) -> bool:
    """Whether MLflow refused the request itself (a bad value, a missing run), as opposed to an outage."""
    return getattr(e, "error_code", None) in _REQUEST_ERRORS


def _cause(error: Exception) -> str:
    """A short reason for the warning (MLflow wraps connection errors in long messages)."""
    text = str(error)
    if "Failed to establish a new connection" in text or "Connection refused" in text:
        return "connection refused"
    if "timed out" in text or "Timeout" in text:
        return "no answer within the timeout"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first[:200]}"

