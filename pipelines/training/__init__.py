"""Training on Ray Train (V2): the per-worker loop and the driver that builds the TorchTrainer."""

from pipelines.training.driver import TrainOutcome, history_frame, run_training
from pipelines.training.job import TrainJob, resolve_use_gpu

__all__ = ["TrainJob", "TrainOutcome", "history_frame", "resolve_use_gpu", "run_training"]
