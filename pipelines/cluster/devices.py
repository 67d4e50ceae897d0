"""Whether a worker group trains on GPUs: decided once per stage from what the cluster has and what
it can add, and said in one line.

Counting only the GPUs of the nodes that are up makes ``use_gpu: auto`` train on CPU on every
autoscaling cluster that idles at zero GPU nodes. The autoscaler's node types (its published
ceiling) say what the cluster *can* offer; where no autoscaler publishes them, ``auto`` cannot know
and says so, and ``use_gpu: true`` asks for GPUs and waits ``ray.resource_wait_s`` for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.errors import ConfigError


@dataclass(frozen=True)
class DevicePlan:
    """The choice and the reason for it, for the stage's one line."""

    use_gpu: bool
    reason: str

    def line(self, key: str, num_workers: int) -> str:
        device = "GPU" if self.use_gpu else "CPU"
        return f"mixpipe: {key}: {num_workers} worker(s) on {device}: {self.reason}"


def plan_devices(
    setting: bool | str, num_workers: int, gpus_up: float, ceiling: Mapping[str, float] | None, key: str = "train.use_gpu",
) -> DevicePlan:
    """Decide CPU or GPU for ``num_workers`` one-GPU workers.

    Args:
        setting: ``auto``, ``True`` or ``False`` (``<key>``).
        gpus_up: GPUs of the alive nodes.
        ceiling: the most of each resource the autoscaler's node types can add up to, or None when
            no autoscaler publishes them.

    Raises:
        ConfigError: ``true`` where the autoscaler's node types can never offer enough GPUs.
    """
    if setting is False:
        return DevicePlan(False, f"{key} is false")
    up = f"the cluster has {gpus_up:g} GPU(s) up"
    if gpus_up >= num_workers:
        return DevicePlan(True, up)
    most = None if ceiling is None else ceiling.get("GPU", 0.0)
    if most is not None and most >= num_workers:
        return DevicePlan(True, f"{up}; its autoscaler's node types add up to {most:g}, asked for {num_workers}")
    if setting is True:
        if most is not None:
            raise ConfigError(
                f"{key} is true but the cluster has {gpus_up:g} GPU(s) up and its autoscaler's node types add up to "
                f"at most {most:g}, for {num_workers} worker(s)"
            )
        return DevicePlan(True, f"{key} is true; {up}, waiting for more up to ray.resource_wait_s")
    if most is not None:
        return DevicePlan(False, f"{up} and its autoscaler's node types add up to {most:g}, for {num_workers} worker(s)")
    return DevicePlan(False, f"{up} and no autoscaler publishes node types with GPUs ({key}: true waits "
                             "ray.resource_wait_s for them)")
