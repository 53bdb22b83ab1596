"""Training several cells outside the trials (baselines, final retrains), in parallel when the search
has several workers: a process pool of `workers` processes (spawn), one torch thread each, like the
trial workers; in this process otherwise.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from nas.config import SearchApp

log = logging.getLogger("nas.search")


@dataclass(frozen=True)
class TrainJob:
    """One training outside the trials: a cell (JSON) trained by `app`'s trainer on its corpus."""

    label: str
    cell_json: str
    app: SearchApp
    seed: int
    run_dir: str
    budget: str
    test: bool = True  # the final comparison scores the test split; baselines do not need it


def train_job(job: TrainJob, threads: int | None = None) -> dict[str, Any]:
    """One training run; its result as a plain dict (picklable, JSON-able for the study)."""
    from nas.cell import CellSpec
    from nas.data import load_corpus
    from nas.search.worker import pin_device
    from nas.train import evaluate

    app = job.app
    device = pin_device(app.device, threads or app.threads)
    trainer = replace(app.trainer, progress=False, test=job.test, device=device)
    corpus = load_corpus(app.data.path, app.data.cache_dir, app.data.format)
    spec = CellSpec.from_json(job.cell_json)
    r = evaluate(spec, trainer, job.seed, corpus, out_dir=job.run_dir,
                 desc=f"{job.label} seed {job.seed}")
    return {**r.to_dict(), "run_dir": job.run_dir, "budget": job.budget}


def scores(data: dict[str, Any]) -> str:
    """'val bpc 1.9876, test bpc 1.9654', or 'diverged (why)': a result in a progress line."""
    if data.get("divergence"):
        return f"diverged ({data['divergence']})"
    test = f", test bpc {data['test_bpc']:.4f}" if data.get("test_bpc") is not None else ""
    return f"val bpc {data['val_bpc']:.4f}{test}"


class _Forward(logging.Handler):
    """Hands a pool process's log record to this process's logger of the same name, so that its
    lines (a long training's progress) go wherever this process's logging goes."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _log_to(records) -> None:
    """Pool process initializer: the project's INFO lines and everyone's warnings go to `records`."""
    root = logging.getLogger()
    root.handlers = [QueueHandler(records)]
    root.setLevel(logging.WARNING)
    logging.getLogger("nas").setLevel(logging.INFO)


def _train_one_thread(job: TrainJob) -> dict[str, Any]:
    return train_job(job, threads=1)


def run_jobs(jobs: list[TrainJob], workers: int | None, progress: bool, desc: str):
    """Yield each job's result, in order, as soon as it is done, over `workers` processes (one
    torch thread each) when more than one, else in this process."""
    if not jobs:
        return
    workers = min(workers or 1, len(jobs))
    with ExitStack() as stack:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc=desc, unit="run", dynamic_ncols=True)
            stack.callback(bar.close)
        if workers <= 1:
            runs = map(train_job, jobs)
        else:
            runs = stack.enter_context(process_pool(workers)).map(_train_one_thread, jobs)
        for job, data in zip(jobs, runs):
            # Before the yield: a caller's zip() may never resume this generator after the last job.
            if bar is not None:
                bar.update(1)
            else:  # not on a terminal: one line per training
                log.info("%s: %s seed %d: %s (%.0f s)", desc, job.label, job.seed, scores(data),
                         data.get("seconds") or 0.0)
            yield data


@contextmanager
def process_pool(workers: int):
    """A pool of `workers` spawned processes whose log records (nas.* INFO and up, others' warnings)
    are handled by this process's loggers; on exit, pending jobs are cancelled."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    records = context.Queue()
    listener = QueueListener(records, _Forward())
    listener.start()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_log_to, initargs=(records,))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)
        listener.stop()
