"""Hyperparameter sweeps with Ray Tune over the training driver. Never re-implements training."""

from pipelines.tuning.sweep import METRIC, TrialOutcome, TrialPoint, grid, run_sweep, trial_job

__all__ = ["METRIC", "TrialOutcome", "TrialPoint", "grid", "run_sweep", "trial_job"]
