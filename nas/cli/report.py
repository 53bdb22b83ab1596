"""`nas-report`: the final comparison of an existing study, printed as a markdown table.

    nas-report study=graph-tpe
    nas-report study=graph-tpe report.top_k=5 report.seeds=5 workers=2
    nas-report study=big-run storage.url=postgresql://user:pw@host/db

The top cells and the baselines are retrained with seeds and scored on the test split (retrains
already in the study are reused), the table and plots go to <out_dir>/report/ and to the study's
MLflow parent run. Settings given on the command line win; the others (tracking, report, baselines,
workers) come from the config the study was searched with.
"""

from __future__ import annotations

import sys
from typing import Any

from nas.cli import check_study_exists, check_trainer, hydra_cli
from nas.cli.search import check_storage
from nas.config import ReportApp, plain, search_app


def check(app: ReportApp) -> None:
    """The settings given, and that the study exists, before any folder is created (the ones taken
    from the study are checked once read, in `run`)."""
    from nas.config_checks import check_baselines, check_device, check_int, check_name, check_report

    check_name("study", app.study)
    check_device("device", app.device, app.threads)
    check_int("workers", app.workers, 1, optional=True)
    if app.baselines is not None:
        from nas.cell import KNOWN_CELLS  # a torch import: only when there are names to check

        check_baselines(app.baselines, KNOWN_CELLS)
    check_report(app.report)
    check_storage(app.storage)
    check_study_exists(app.study, app.storage.url, app.out_dir)


def report_config(stored: dict[str, Any], given: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The plain search config to report with: the study's (`stored`), with this command's settings
    (`given`, the plain ReportApp) on top where its `overrides` (Hydra's key=value list) name them:
    `nas-report study=X` reuses the study's tracking URI, top_k, baselines."""
    merged = {**stored, "study": given["study"], "out_dir": given["out_dir"], "storage": given["storage"]}
    for key in ("tracking", "report"):
        merged[key] = {**given[key], **stored.get(key, {})}
    for item in overrides:
        path = item.split("=", 1)[0].lstrip("+~").split(".")
        if path[0] in ("baselines", "workers", "threads", "device", "tracking", "report"):
            value, where = given, merged
            for k in path:
                value = value[k]
            for k in path[:-1]:
                where = where[k]
            where[path[-1]] = value
    return merged


def run(app: ReportApp) -> None:
    from hydra.core.hydra_config import HydraConfig

    from nas.search.run import compare
    from nas.search.study import join_study

    study, stored = join_study(app.study, app.storage.url, app.out_dir)
    search = search_app(report_config(stored, plain(app), list(HydraConfig.get().overrides.task)))
    check_trainer(search.trainer, search.data)
    comparison = compare(study, search, progress=sys.stderr.isatty())
    print(comparison.markdown())
    print(f"files: {', '.join(comparison.files)}")


main = hydra_cli("nas-report", "report", ReportApp, run, check)


if __name__ == "__main__":
    main()
