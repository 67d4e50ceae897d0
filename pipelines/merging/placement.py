"""Where a merge method runs, and its time and memory there.

Most methods are a few tensor operations on the state dicts and run in the merge stage's process.
The methods whose registry row is ``accelerated`` (AdaMerging: a hundred forward and backward
passes) run as a Ray task of their own holding one GPU when the cluster has one, since the stage's
process runs where its driver or Ray job runs: on a cluster that is usually the head node, which
has no GPU. Where Ray is not connected, or the cluster has no GPU, they run in the stage's process,
on this machine's GPU when ``torch.cuda.is_available()``.

``merge.use_gpu`` decides as ``train.use_gpu`` does (:func:`pipelines.cluster.devices.plan_devices`):
``auto`` counts the GPUs of the cluster's nodes and of its autoscaler's node types, ``true``
requires one, ``false`` keeps every method on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.cluster.devices import plan_devices
from pipelines.errors import ConfigError
from pipelines.memory import peak_rss_above_start
from pipelines.merging.registry import MergeResult, run_merge
from pipelines.merging.state import StateDict
from pipelines.vector_math import warm_vector_math

KEY = "merge.use_gpu"


@dataclass(frozen=True)
class Placement:
    """Where the accelerated methods run: a Ray task with one GPU (``on_worker``), or the stage's
    process on ``device``; ``reason`` says why, for the stage's one line."""

    on_worker: bool
    device: str
    reason: str

    def line(self, methods: Sequence[str]) -> str:
        where = "a Ray task with one GPU each" if self.on_worker else f"the stage's process on {self.device}"
        return f"mixpipe: {KEY}: {', '.join(methods)} on {where}: {self.reason}"


IN_PROCESS_CPU = Placement(False, "cpu", "no method needs a device")


@dataclass(frozen=True)
class PlacedMerge:
    """A method's result, the seconds and peak resident memory (MiB) of its merge where it ran,
    and where that was (``"stage cpu"``, ``"ray task cuda"``, ...)."""

    result: MergeResult
    seconds: float
    peak_memory_mib: float
    ran_on: str


def plan_placement(setting: bool | str, ray_connected: bool, resource_wait_s: float = 0.0) -> Placement:
    """Decide where accelerated methods run (see the module docstring).

    Args:
        setting: ``merge.use_gpu``: ``auto``, ``True`` or ``False``.
        ray_connected: whether the stage joined Ray (a cluster, or the local instance of a search);
            the cluster's GPUs are counted then, else this machine's.
        resource_wait_s: ``ray.resource_wait_s``, how long a cluster may take to add a GPU node.

    Raises:
        ConfigError: ``true`` where neither the cluster nor this machine can offer a GPU.
        ClusterError: a GPU the cluster does not add within ``resource_wait_s``.
    """
    if setting is False:
        return Placement(False, "cpu", f"{KEY} is false")
    if ray_connected:
        import ray

        from pipelines.cluster.resources import Demand, autoscaler_ceiling, ensure_feasible

        plan = plan_devices(setting, 1, ray.cluster_resources().get("GPU", 0.0), autoscaler_ceiling(), key=KEY)
        if plan.use_gpu:
            ensure_feasible(Demand(f"{KEY}: one merge task", {"CPU": 1, "GPU": 1}), resource_wait_s)
            return Placement(True, "cuda", plan.reason)
        return Placement(False, "cpu", plan.reason)
    if torch.cuda.is_available():
        return Placement(False, "cuda", "this machine has a GPU and the stage joined no Ray cluster")
    if setting is True:
        raise ConfigError(f"{KEY} is true, but this machine has no GPU (torch.cuda.is_available() is False) and the "
                          "stage joined no Ray cluster (ray.address)")
    return Placement(False, "cpu", "this machine has no GPU and the stage joined no Ray cluster")


def may_use_gpu(accelerated: Sequence[str], setting: bool | str) -> bool:
    """Whether some listed method is ``accelerated`` and ``merge.use_gpu`` (``setting``) allows a GPU."""
    return bool(accelerated) and setting is not False


def joins_cluster_for_gpu(accelerated: Sequence[str], setting: bool | str, ray_address: str | None) -> bool:
    """Whether the stage joins a configured cluster (never a local instance) for the GPUs of the
    ``accelerated`` methods it lists alone (``RAY_ADDRESS`` or ``ray.address``: ``ray_address``)."""
    from pipelines.cluster.session import resolve_address

    return may_use_gpu(accelerated, setting) and resolve_address(ray_address) is not None


def place_methods(accelerated: Sequence[str], setting: bool | str, ray_connected: bool, resource_wait_s: float = 0.0,
                  report: Callable[[str], None] = print) -> Placement:
    """:func:`plan_placement` for the ``accelerated`` methods listed, said in one line; the CPU in
    this process when there are none."""
    if not accelerated:
        return IN_PROCESS_CPU
    placement = plan_placement(setting, ray_connected, resource_wait_s)
    report(placement.line(accelerated))
    return placement


def merge_timed(method: str, members: Sequence[StateDict], base: StateDict | None, params: Mapping[str, Any],
                supplied: Mapping[str, Any], device: str, where: str = "stage") -> PlacedMerge:
    """Run ``method`` here, with the supplied module (if any) on ``device`` (``cuda`` falls back to
    the CPU where this process sees no GPU), timing the merge and its memory."""
    warm_vector_math()  # in a Ray task of its own, this is the process's first torch work
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    supplied = {name: value.to(device) if isinstance(value, torch.nn.Module) else value
                for name, value in supplied.items()}
    started = time.perf_counter()
    with peak_rss_above_start() as memory:
        result = run_merge(method, list(members), base, **params, **supplied)
    return PlacedMerge(result, time.perf_counter() - started, memory.mib, f"{where} {device}")


def merge_placed(placement: Placement, accelerated: bool, method: str, members: Sequence[StateDict],
                 base: StateDict | None, params: Mapping[str, Any], supplied: Mapping[str, Any]) -> PlacedMerge:
    """:func:`merge_timed` where ``placement`` puts the method: an accelerated one in a Ray task of
    its own when the placement says so (the states travel through the object store and the result
    comes back), anything else in this process on the CPU."""
    if not accelerated:
        return merge_timed(method, members, base, params, supplied, "cpu")
    if not placement.on_worker:
        return merge_timed(method, members, base, params, supplied, placement.device)
    import ray

    task = ray.remote(merge_timed).options(num_cpus=1, num_gpus=1, name=f"mixpipe-merge-{method}")
    return ray.get(task.remote(method, list(members), base, dict(params), dict(supplied), "cuda", "ray task"))
