"""Load test: one study, many worker processes, random workers killed along the way.

The workers run the project's own worker loop (nas.search.worker.run_trials: reap_lost, pop_trial,
Heartbeat, study.tell) on a cheap objective (sleep a random 0.5-3 s, return a random score), so
what is measured is the storage and the claiming protocol, not training:

    python benchmarks/loadtest.py --workers 64 --trials 640 --kills 8                  # journal file
    python benchmarks/loadtest.py --workers 64 --trials 640 --kills 8 \\
        --storage postgresql+psycopg2://nas:nas@127.0.0.1:55432/nas --hosts 8           # PostgreSQL

--hosts K makes the workers pose as K machines (worker i reports host loadtest-<i mod K>), so a
killed worker's trial is found either by its process being gone (a worker on its "host") or by its
heartbeat going stale (the others), as on a real cluster.

What the checks mean (each worker appends a line to its own file, one write per line, so a killed
worker's lines up to its death survive; "claim" when the objective starts, "told" after study.tell):
- exact count: the trials that count toward the budget (all but those failed as lost) number
  exactly --trials, all COMPLETE, and they come from --trials distinct logical trials (a retry
  belongs to the logical trial it retries, user attr retry_of);
- duplicate: a trial claimed by two workers, or a logical trial with more than one COMPLETE result;
- lost result: a result a worker recorded as told that the storage does not hold (its trial not
  COMPLETE, or another value, or another owner); also reported: trials left unfinished, and killed
  workers' trials that were never failed as lost and retried.
A retry enqueued after every worker has exited is run by a finishing round of two workers (what a
rerun of nas-search would do). Reported but not a failure: trials taken from a live worker whose
heartbeat was judged stale (its cell runs twice). The exit status is 1 when a check fails.

    python benchmarks/loadtest.py --probe-ask 64 640 [--storage URL]   # one process's ask, by queue
Latencies (per trial, as a worker sees them): ask = reap_lost + pop_trial (+ starting the heartbeat),
from the end of the previous trial to the objective starting; suggest = one trial.suggest_float;
tell = study.tell (+ stopping the heartbeat and reading the finished trial back for the hook).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `benchmarks.loadtest_report` imports as a script
from benchmarks.loadtest_report import check, machine, measure
from nas.search.optuna_adapter import trial_id

# ----------------------------------------------------------------------------- worker process

class Records:
    """Append-only JSON lines, one os.write each: what a SIGKILLed worker wrote is in the file."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, **event) -> None:
        os.write(self._fd, (json.dumps(event) + "\n").encode())


class SleepObjective:
    """Sleep a random time in [lo, hi] s, return a random score; records each claim and each tell."""

    def __init__(self, records: Records, lo: float, hi: float, seed: int) -> None:
        self.records, self.lo, self.hi = records, lo, hi
        self.rng = random.Random(seed)
        self.mark = time.perf_counter()  # end of the previous trial (or of start-up)
        self.pending: dict = {}

    def __call__(self, trial) -> float:
        start = time.perf_counter()
        self.records.write(ev="claim", trial_id=trial_id(trial), number=trial.number, t=time.time())
        trial.suggest_float("x", 0.0, 1.0)
        sampled = time.perf_counter()
        time.sleep(self.rng.uniform(self.lo, self.hi))
        value = self.rng.random()
        self.pending = {"trial_id": trial_id(trial), "value": value, "ask_s": start - self.mark,
                        "suggest_s": sampled - start}
        self.mark = time.perf_counter()
        return value

    def told(self, frozen) -> None:
        """run_trials' on_trial hook: called right after study.tell."""
        tell_s = time.perf_counter() - self.mark
        assert trial_id(frozen) == self.pending["trial_id"], "on_trial saw another trial than the objective"
        self.records.write(ev="told", number=frozen.number, tell_s=tell_s, t=time.time(), **self.pending)
        self.mark = time.perf_counter()


def _import_run_trials():
    """nas.search.worker.run_trials without importing torch: that module takes only the Objective type
    and TrialFailed from nas.search.objective (which imports the trainer); this objective is neither.
    Should the worker module come to need more of it, the real module is imported (slower start)."""
    if "nas.search.objective" not in sys.modules:
        stub = types.ModuleType("nas.search.objective")
        stub.Objective = object
        stub.TrialFailed = type("TrialFailed", (Exception,), {"state": "failed"})
        sys.modules["nas.search.objective"] = stub
        try:
            from nas.search.worker import run_trials
        except ImportError:
            for name in ("nas.search.objective", "nas.search.worker"):
                sys.modules.pop(name, None)
        else:
            return run_trials
    from nas.search.worker import run_trials

    return run_trials


def worker(args: argparse.Namespace) -> None:
    if args.host:
        import socket

        socket.gethostname = lambda: args.host  # pose as another machine (see --hosts)
    import optuna

    from nas.search.storage import make_storage

    run_trials = _import_run_trials()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(args.storage, Path(args.dir))
    sampler = optuna.samplers.RandomSampler(seed=args.index)
    study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler)
    records = Records(Path(args.dir) / "records" / f"{args.index}.jsonl")
    records.write(ev="ready", pid=os.getpid(), host=args.host, t=time.time())
    objective = SleepObjective(records, args.sleep[0], args.sleep[1], seed=1000 + args.index)
    run_trials(study, objective, {"heartbeat_interval": args.heartbeat, "grace_period": args.grace},
               on_trial=objective.told)
    records.write(ev="done", t=time.time())


# ----------------------------------------------------------------------------- driver

def _read_records(folder: Path) -> dict[int, list[dict]]:
    out = {}
    for path in folder.glob("*.jsonl"):
        lines = path.read_text().splitlines()
        # A line cut by a kill is impossible (one write each), but a partial last line costs nothing to skip.
        out[int(path.stem)] = [json.loads(s) for s in lines if s.endswith("}")]
    return out


def _told_count(folder: Path) -> int:
    return sum(p.read_bytes().count(b'"ev": "told"') for p in folder.glob("*.jsonl"))


class Fleet:
    """The worker processes of one run, started by index; killed ones are waited for at once (a
    zombie would still look alive to reap_lost's process check)."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args, self.folder, self.procs = args, folder, {}
        self.killed: list[int] = []
        self.load: list[float] = []  # the machine's 1-minute load average, sampled while waiting
        (folder / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, index: int) -> None:
        a = self.args
        host = f"loadtest-{index % a.hosts}" if a.hosts > 1 else ""
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--index", str(index),
               "--study", a.study, "--dir", str(self.folder), "--sleep", str(a.sleep[0]), str(a.sleep[1]),
               "--heartbeat", str(a.heartbeat), "--grace", str(a.grace), "--host", host]
        if a.storage:
            cmd += ["--storage", a.storage]
        log = open(self.folder / "logs" / f"{index}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[index] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def _in_trial(self, index: int) -> bool:
        path = self.folder / "records" / f"{index}.jsonl"
        lines = path.read_bytes().splitlines() if path.exists() else []
        return bool(lines) and b'"ev": "claim"' in lines[-1]

    def kill_one(self, rng: random.Random) -> int | None:
        """SIGKILL a random live worker, preferring one that is running a trial."""
        live = self.alive()
        if not live:
            return None
        index = rng.choice([i for i in live if self._in_trial(i)] or live)
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait()
        self.killed.append(index)
        return index

    def wait(self, kill_at: list[int], rng: random.Random) -> None:
        """Wait for every worker to exit, killing one each time the told count passes a threshold."""
        todo = sorted(kill_at)
        while self.alive():
            while todo and _told_count(self.folder / "records") >= todo[0]:
                todo.pop(0)
                self.kill_one(rng)
            self.load.append(os.getloadavg()[0])
            time.sleep(0.2)

    def errors(self) -> dict[int, str]:
        """The workers (not killed) that exited with an error: exit code and last line of output."""
        out = {}
        for i, p in self.procs.items():
            if i not in self.killed and p.returncode != 0:
                lines = (self.folder / "logs" / f"{i}.log").read_text(errors="replace").strip().splitlines()
                out[i] = f"exit {p.returncode}: {lines[-1] if lines else ''}"
        return out


def run(args: argparse.Namespace) -> dict:
    """Run one load test; returns the measurements and the checks (see the module docstring)."""
    import optuna

    from nas.search.storage import make_storage, top_up

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(args.dir)
    (folder / "records").mkdir(parents=True, exist_ok=True)
    storage = make_storage(args.storage, folder)
    try:  # a fresh study: drop a previous run's
        optuna.delete_study(study_name=args.study, storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(study_name=args.study, storage=storage)
    top_up(study, args.trials)  # what nas-search's open_study does before starting workers
    rng = random.Random(args.seed)
    kill_at = [int(rng.uniform(0.1, 0.8) * args.trials) for _ in range(args.kills)]
    fleet = Fleet(args, folder)
    start = time.time()
    for i in range(args.workers):
        fleet.start(i)
    fleet.wait(kill_at, rng)
    rounds = finish(study, fleet, args, rng)
    records = _read_records(folder / "records")
    checks = check(study.get_trials(deepcopy=False), records, fleet.killed, args.trials)
    checks["worker_errors"] = fleet.errors()
    checks["ok"] = checks["ok"] and not checks["worker_errors"]
    return {**measure(records, fleet, args, start), "finishing_rounds": rounds, "checks": checks}


def finish(study, fleet: Fleet, args: argparse.Namespace, rng: random.Random) -> int:
    """After the workers exit: reap what they left running and run the retries in finishing rounds
    of two workers, as a rerun of `nas-search` (or its waiting launcher) would. Returns the rounds.
    Gives up after 2 grace periods + 30 s without progress (the checks then report the trials)."""
    from optuna.trial import TrialState

    from nas.search.storage import reap_lost

    rounds, deadline = 0, time.time() + 2 * args.grace + 30
    while rounds < 5 and time.time() < deadline:
        reap_lost(study, args.grace)
        states = {t.state for t in study.get_trials(deepcopy=False)}
        if TrialState.WAITING in states:
            rounds += 1
            for i in range(2):
                fleet.start(args.workers + 2 * (rounds - 1) + i)
            fleet.wait([], rng)
            deadline = time.time() + 2 * args.grace + 30
        elif TrialState.RUNNING in states:
            time.sleep(1.0)  # a killed worker of another "host": its heartbeat must stay still for grace s
        else:
            break
    return rounds


def probe_ask(args: argparse.Namespace, waiting: list[int], repeats: int = 5) -> dict:
    """One process, no other worker: the median cost of reap_lost, pop_trial and suggest + tell
    with `n` trials waiting in the study, for each n in `waiting` (the ask's cost per waiting trial)."""
    import statistics

    import optuna

    from nas.search.storage import make_storage, pop_trial, reap_lost, top_up

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    for n in waiting:
        storage = make_storage(args.storage, Path(args.dir) / f"probe-{n}")
        try:
            optuna.delete_study(study_name=f"{args.study}-probe", storage=storage)
        except KeyError:
            pass
        study = optuna.create_study(study_name=f"{args.study}-probe", storage=storage,
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        top_up(study, n + repeats)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            reap_lost(study, args.grace)
            t1 = time.perf_counter()
            trial = pop_trial(study)
            t2 = time.perf_counter()
            trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, 0.5)
            times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        out[n] = {k: 1e3 * statistics.median(t[i] for t in times)
                  for i, k in enumerate(("reap_ms", "pop_ms", "suggest_tell_ms"))}
    return {"storage": "journal" if not args.storage else args.storage.split(":", 1)[0].split("+", 1)[0],
            "repeats": repeats, "median_by_waiting_trials": out}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--storage", default="", help="an RDB URL; empty: the journal file in --dir")
    p.add_argument("--study", default="loadtest", help="study name (a study of that name is replaced)")
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--trials", type=int, default=640)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--hosts", type=int, default=1, help="machines the workers pose as")
    p.add_argument("--sleep", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"))
    p.add_argument("--heartbeat", type=int, default=1, help="storage.heartbeat_interval, s")
    p.add_argument("--grace", type=int, default=12, help="storage.grace_period, s (>= 2 beats + 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="", help="working folder (journal, records, logs); default: a temp dir")
    p.add_argument("--out", default="", help="write the result as JSON here")
    p.add_argument("--probe-ask", type=int, nargs="+", default=None, metavar="N",
                   help="instead: time one process's ask with N trials waiting, for each N")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 1 or args.trials < 1 or args.kills < 0 or args.hosts < 1:
        p.error(f"expected --workers, --trials, --hosts >= 1 and --kills >= 0, got "
                f"{args.workers}, {args.trials}, {args.hosts}, {args.kills}")
    if args.kills >= args.workers:
        p.error(f"--kills must leave a worker alive: got {args.kills} kills of {args.workers} workers")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="nas-loadtest-") as tmp:
        args.dir = args.dir or tmp
        if args.probe_ask:
            result = {**probe_ask(args, args.probe_ask), "machine": machine()}
        else:
            result = {**run(args), "machine": machine()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.exit(0 if result.get("checks", {"ok": True})["ok"] else 1)


if __name__ == "__main__":
    main()
