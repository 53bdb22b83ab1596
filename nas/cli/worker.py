"""`nas-worker`: join a study started by nas-search, from this or another machine, and run trials
until the study's trial budget is used up.

    nas-worker study=graph-tpe                                    # same machine, journal storage
    nas-worker study=big-run storage.url=postgresql://user:pw@host/db device=cuda:0
"""

from __future__ import annotations

from nas.cli import Failure, check_study_exists, check_trainer, hydra_cli
from nas.cli.search import check_storage
from nas.config import WorkerApp, search_app


def check(app: WorkerApp) -> None:
    """The worker's settings, and that its study exists, before any folder is created (the study's
    own settings are checked once read from its storage)."""
    from nas.config_checks import check_worker_app

    check_worker_app(app)
    check_storage(app.storage)
    check_study_exists(app.study, app.storage.url, app.out_dir)


def run(app: WorkerApp) -> None:
    from nas.search.launch import work
    from nas.search.study import join_study
    from nas.search.worker import WorkerFailed

    study, stored = join_study(app.study, app.storage.url, app.out_dir)
    search = search_app(stored)
    check_trainer(search.trainer, search.data)
    try:
        print(work(app, study, search))
    except WorkerFailed as e:  # the machine failed (full disk, ...): the trial goes back to the study
        raise Failure(str(e)) from e


main = hydra_cli("nas-worker", "worker", WorkerApp, run, check)


if __name__ == "__main__":
    main()
