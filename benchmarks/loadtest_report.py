"""The load test's verdict and measurements (benchmarks/loadtest.py runs the fleet): the checks of
that module's docstring over the study's trials and the workers' event records, throughput and
latencies, and the machine it ran on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _stats(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    ms = {f"p{round(100 * q)}_ms": 1e3 * xs[min(len(xs) - 1, int(q * len(xs)))] for q in (0.5, 0.95, 0.99)}
    return {"n": len(xs), "mean_ms": 1e3 * sum(xs) / len(xs), **ms, "max_ms": 1e3 * xs[-1]}


def _events(records: dict[int, list[dict]], kind: str) -> list[dict]:
    return [{**e, "index": index} for index, events in records.items() for e in events if e["ev"] == kind]


def check(trials: list, records: dict[int, list[dict]], killed: list[int], n_trials: int) -> dict:
    """The checks of the module docstring: `trials` the study's (FrozenTrial), `records` each
    worker's events by worker index, `killed` the indices of the workers killed."""
    from optuna.trial import TrialState

    from nas.search.optuna_adapter import trial_id
    from nas.search.storage import WORKER_ATTR, counts_toward_budget
    from nas.trials import TrialRecord

    by_id = {trial_id(t): t for t in trials}
    root = {tid: TrialRecord.of(t).first_try for tid, t in by_id.items()}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counted = [t for t in trials if counts_toward_budget(t)]
    claims: dict[int, list[int]] = {}
    for e in _events(records, "claim"):
        claims.setdefault(e["trial_id"], []).append(e["index"])
    told, pids = _events(records, "told"), {e["index"]: e["pid"] for e in _events(records, "ready")}
    results_per_root: dict[int, int] = {}
    for t in complete:
        results_per_root[root[trial_id(t)]] = results_per_root.get(root[trial_id(t)], 0) + 1

    def holds(r: dict) -> bool:  # the storage has this told result: its trial, value and owner
        t = by_id.get(r["trial_id"])
        return (t is not None and t.state == TrialState.COMPLETE and t.values == [r["value"]]
                and str(t.system_attrs.get(WORKER_ATTR, "")).endswith(f":{pids.get(r['index'])}"))

    told_ids = {r["trial_id"] for r in told}
    in_flight = [e["trial_id"] for e in _events(records, "claim")
                 if e["index"] in killed and e["trial_id"] not in told_ids]
    # A killed worker's trial is failed as lost and its logical trial completed once by a retry
    # (unless the kill came between study.tell and the "told" line: then the trial is COMPLETE).
    not_retried = [tid for tid in in_flight if by_id[tid].state != TrialState.COMPLETE
                   and (counts_toward_budget(by_id[tid]) or results_per_root.get(root[tid], 0) != 1)]
    logical = len({root[trial_id(t)] for t in counted})
    out = {
        "counted_trials": len(counted), "complete_trials": len(complete), "logical_trials": logical,
        "exact_count": len(counted) == len(complete) == logical == n_trials,
        "duplicate_claims": sorted(tid for tid, who in claims.items() if len(who) > 1),
        "duplicate_results": sorted(r for r, n in results_per_root.items() if n > 1),
        "lost_results": sorted(r["trial_id"] for r in told if not holds(r)),
        "unfinished_trials": sorted(t.number for t in trials if not t.state.is_finished()),
        "killed_in_trial": len(in_flight), "failed_as_lost": len(trials) - len(counted),
        "killed_not_retried": sorted(not_retried),
        # Trials reaped from a live worker (its heartbeat judged stale), which dropped its result:
        # no result is lost (the retry completes) but the cell ran twice. Reported, not a failure.
        "dropped_by_live_workers": sorted(e["trial_id"] for e in _events(records, "claim")
                                          if e["index"] not in killed and e["trial_id"] not in told_ids),
    }
    out["ok"] = out["exact_count"] and not any(out[k] for k in (
        "duplicate_claims", "duplicate_results", "lost_results", "unfinished_trials", "killed_not_retried"))
    return out


def measure(records: dict[int, list[dict]], fleet, args, start: float) -> dict:
    """Throughput, latencies and start-up of one run (see the module docstring)."""
    told = _events(records, "told")
    first_claim = min((e["t"] for e in _events(records, "claim")), default=0.0)
    last_tell = max((r["t"] for r in told), default=0.0)
    ready = sorted(e["t"] for e in _events(records, "ready"))
    return {
        "storage": "journal" if not args.storage else args.storage.split(":", 1)[0].split("+", 1)[0],
        "workers": args.workers, "hosts": args.hosts, "trials": args.trials, "kills": len(fleet.killed),
        "sleep_s": list(args.sleep), "heartbeat_s": args.heartbeat, "grace_s": args.grace,
        "wall_s": time.time() - start,
        "load_avg_1m": {"mean": sum(fleet.load) / len(fleet.load), "max": max(fleet.load)}
        if fleet.load else {},
        # Between the first claim and the last tell: the rate once workers run, without start-up.
        "trials_per_s": len(told) / max(1e-9, last_tell - first_claim),
        "ideal_trials_per_s": args.workers / (sum(args.sleep) / 2),
        "workers_ready_s": {"first": ready[0] - start if ready else None,
                            "last": ready[-1] - start if ready else None},
        "latency": {k: _stats([r[f"{k}_s"] for r in told]) for k in ("ask", "suggest", "tell")},
    }


def machine() -> dict:
    import optuna
    import sqlalchemy

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__,
            "load_avg_1m_at_end": os.getloadavg()[0]}
