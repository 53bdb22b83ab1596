"""What an unreachable MLflow store costs a search: seconds of tracking calls, against bounds.

The tracker retries a few times with a short backoff, warns once and goes offline (nas/tracking/
connection.py), so an outage costs one round of short retries, not MLflow's own minutes of backoff.
tests/tracking checks what happens (one warning, no exception, the runs logged once the store is
back); this measures how long it takes, which is no test assertion (CI is noisy):

    unreachable   a store that never answered: start_search, log_trial, log_baseline, end_search
                  (bound 10 s; retries=1, timeout=2 s, as the test had it)
    killed        a real `mlflow server` that dies after the search started: the same calls (bound 60 s,
                  the test's bound for a whole tiny search whose server died after its first trial)

    python benchmarks/tracking_overhead.py                 # JSON on stdout; exit status 1 past a bound
    python benchmarks/tracking_overhead.py --skip-server   # only the case that needs no server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

BOUNDS_S = {"unreachable": 10.0, "killed": 60.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calls(uri: str) -> float:
    """Seconds for one search's worth of tracking calls against `uri` (retries=1, timeout=2 s)."""
    import optuna

    from nas import trials
    from nas.tracking import Tracker, TrackingWarning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(uri, retries=1, timeout=2)
    study = optuna.create_study(study_name=f"overhead-{time.time_ns()}")
    trial = study.ask()
    trials.mark(trial, trials.Outcome.COMPLETE)
    study.tell(trial, 1.0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrackingWarning)
        tracker.start_search(study, {"seed": 0})
        tracker.log_trial(study, study.trials[0], {})
        tracker.log_baseline(study, "lstm", {"budget": "b", "cell_hash": "h", "seed": 0}, {})
        tracker.end_search(study)
    return time.perf_counter() - start


@contextlib.contextmanager
def server(folder: Path):
    """A real `mlflow server` on a free localhost port; yields (uri, process), killed on exit."""
    from nas.tracking.server import start_server, wait_until_up

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(f"sqlite:///{folder / 'server.db'}", port, folder / "server.log", str(folder / "artifacts"))
    try:
        why = wait_until_up(proc, url)
        if why is not None:
            raise RuntimeError(f"mlflow server {why} (see {folder / 'server.log'})")
        yield url, proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def killed(folder: Path) -> float:
    """The calls against a server that answered once (the experiment exists) and then died."""
    import optuna

    from nas.tracking import Tracker

    with server(folder) as (uri, proc):
        Tracker(uri).start_search(optuna.create_study(study_name="warm"), {"seed": 0})
        kill(proc)
        return calls(uri)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-server", action="store_true", help="only the unreachable store")
    args = parser.parse_args()
    seconds = {"unreachable": calls(f"http://127.0.0.1:{free_port()}")}
    if not args.skip_server:
        with tempfile.TemporaryDirectory(prefix="nas-tracking-") as tmp:
            seconds["killed"] = killed(Path(tmp))
    out = {case: {"seconds": round(s, 2), "bound_s": BOUNDS_S[case], "within_bound": s < BOUNDS_S[case]}
           for case, s in seconds.items()}
    print(json.dumps(out, indent=2))
    return 0 if all(r["within_bound"] for r in out.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
