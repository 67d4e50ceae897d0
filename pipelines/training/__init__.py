"""Training on Ray Train (V2): the per-worker loop and the driver that builds the TorchTrainer."""

from pipelines.training.driver import TrainOutcome, history_frame, run_training
from pipelines.cluster.devices import DevicePlan, plan_devices
from pipelines.training.job import TrainJob

__all__ = ["DevicePlan", "TrainJob", "TrainOutcome", "history_frame", "plan_devices", "run_training"]
