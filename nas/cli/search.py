"""`nas-search`: search cells on one Optuna study, then compare the best with the baselines.

    nas-search
    nas-search search_space=highway controller=reinforce n_trials=200 workers=4 trainer.steps=2000
    nas-search storage.url=postgresql://user:pw@host/db study=big-run   # other machines: nas-worker
"""

from __future__ import annotations

from pathlib import Path

from nas.cli import Failure, check_writable, hide_password, hydra_cli
from nas.config import SearchApp


def check(app: SearchApp) -> None:
    """Every setting, before the study or any folder is created (nas.search.api.check_search), and
    the folders written only at the end of a search: a read-only one must fail now, not hours later."""
    from nas.search.api import check_search

    check_search(app)
    if app.export.enabled:
        check_writable(app.export.dir)
    if app.tracking.enabled and not app.tracking.uri:
        check_writable(Path("runs") / "mlflow")


def check_storage(storage) -> None:
    """The storage settings, by the storage module's own rules."""
    from nas.search.storage import check_storage as check

    check(storage)


def run(app: SearchApp) -> None:
    from nas.search.run import search
    from nas.search.summary import format_table
    from nas.search.worker import WorkerFailed

    try:
        outcome = search(app)
    except WorkerFailed as e:  # a local worker died: the work failed, the settings were fine
        raise Failure(str(e)) from e
    print(format_table(outcome))
    if outcome.comparison is not None:
        print("\nFinal comparison (retrained, test split, mean +- std over seeds):")
        print(outcome.comparison.markdown())
    if outcome.exported is not None:
        print(f"\n{outcome.exported}")
    if app.tracking.enabled:
        uri = app.tracking.uri
        uri = f" --uri {hide_password(uri, uri)}" if uri else ""
        print(f"inspect the runs in MLflow: nas-dashboard{uri}   (it prints the links to each study's runs "
              "and comparison)")


main = hydra_cli("nas-search", "search", SearchApp, run, check)


if __name__ == "__main__":
    main()
