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
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import OmegaConf

from nas.cli import check_study_exists, check_trainer, hydra_cli
from nas.cli.search import check_storage
from nas.config import ReportConfig, StorageConfig, TrackingConfig


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


def check(app: ReportApp) -> None:
    """The settings given, and that the study exists, before any folder is created (the ones taken
    from the study are checked once read, in `run`)."""
    from nas.config import check_baselines, check_device, check_int, check_name, check_report

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
    """The study's search config, with the settings this command was given (`overrides`, Hydra's
    key=value list) on top: `nas-report study=X` reuses the study's tracking URI, top_k, baselines."""
    cfg = {**stored, "study": given["study"], "out_dir": given["out_dir"], "storage": given["storage"]}
    for key in ("tracking", "report"):
        cfg[key] = {**given[key], **stored.get(key, {})}
    for item in overrides:
        path = item.split("=", 1)[0].lstrip("+~").split(".")
        if path[0] in ("baselines", "workers", "threads", "device", "tracking", "report"):
            value, where = given, cfg
            for k in path:
                value = value[k]
            for k in path[:-1]:
                where = where[k]
            where[path[-1]] = value
    return cfg


def run(app: ReportApp) -> None:
    from hydra.core.hydra_config import HydraConfig

    from nas.search.report import final_comparison
    from nas.search.study import join_study
    from nas.tracking import Tracker

    given = OmegaConf.to_container(app, resolve=True)
    study, stored = join_study(given["study"], given["storage"]["url"], given["out_dir"])
    cfg = report_config(stored, given, list(HydraConfig.get().overrides.task))
    check_trainer(cfg["trainer"], cfg["data"])
    tracker = Tracker.from_config(cfg)
    tracker.start_search(study, cfg)
    comparison = final_comparison(study, cfg, tracker, progress=sys.stderr.isatty())
    tracker.log_comparison(study, comparison)
    tracker.end_search(study)
    print(comparison.markdown())
    print(f"files: {', '.join(comparison.files)}")


main = hydra_cli("nas-report", "report", ReportApp, run, check)


if __name__ == "__main__":
    main()
