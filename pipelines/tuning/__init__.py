"""Hyperparameter sweeps with Ray Tune over the training driver. Never re-implements training."""

from pipelines.tuning.sweep import TrialOutcome, TrialPoint, grid, grid_scores, run_sweep, trial_job, with_point_spread

__all__ = ["TrialOutcome", "TrialPoint", "grid", "grid_scores", "run_sweep", "trial_job", "with_point_spread"]
