"""Cell search: one Optuna study, its storage and workers, the trial objective and the controllers."""
