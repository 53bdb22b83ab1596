"""Every MLflow call of the project (placeholder: tracking is being written; this no-op keeps the API)."""

from __future__ import annotations

from typing import Any


class Tracker:
    """No-op tracker with the final API: from_config, start_search, log_trial, log_baseline,
    log_comparison, end_search."""

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Tracker":
        return cls()

    def start_search(self, study, cfg: dict[str, Any]) -> None:
        pass

    def log_trial(self, study, trial, cfg: dict[str, Any]) -> None:
        pass

    def log_baseline(self, study, name: str, result: dict[str, Any], cfg: dict[str, Any]) -> None:
        pass

    def log_comparison(self, study, comparison) -> None:
        pass

    def end_search(self, study, outcome) -> None:
        pass
