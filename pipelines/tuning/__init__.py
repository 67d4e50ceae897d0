"""Hyperparameter sweeps with Ray Tune over the training driver. Never re-implements training."""

from pipelines.tuning.sweep import TrialOutcome, TrialPoint, grid, run_sweep, trial_job

__all__ = ["TrialOutcome", "TrialPoint", "grid", "run_sweep", "trial_job"]
