"""What a stage asks of the cluster, checked before anything waits on it.

Ray waits for resources it does not have: a placement group for 64 training workers on a 2-CPU
instance is simply pending, and Train V2 retries its start forever. A :class:`Demand` (identical
bundles placed together, as a worker group is) is checked against the alive nodes first: one that
can never be placed fails at once with one line naming the request and the cluster. A cluster may
grow: where an autoscaler publishes its node types (the ceiling Ray Train checks too), a demand
under that ceiling is left to wait in Ray's queue, where its pending placement group is what makes
the autoscaler add nodes; where none does, the stage waits at most ``ray.resource_wait_s`` while a
placement group of the demand stands in Ray's queue for the same reason (an autoscaler adds nodes
for pending demand only, never for a driver polling the node list).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pipelines.errors import ClusterError

# Ray accounts resources in fixed point with four decimals; so do the checks, so that a 0.1-CPU
# bundle counts ten to a CPU exactly.
_UNITS = 10_000


def _units(amount: float) -> int:
    return round(amount * _UNITS)


def describe(resources: Mapping[str, float]) -> str:
    """``{CPU: 2, GPU: 1}``, keys in order, CPU and GPU first, values without trailing zeros."""
    order = sorted(resources, key=lambda k: (k not in ("CPU", "GPU"), k))
    return "{" + ", ".join(f"{k}: {resources[k]:g}" for k in order) + "}"


@dataclass(frozen=True)
class Demand:
    """``count`` identical ``bundle`` s that must be held at the same time (a worker group).

    Attributes:
        what: the params that made the request, for messages (``"train.num_workers: 64 workers"``).
    """

    what: str
    bundle: Mapping[str, float]
    count: int = 1
    total: Mapping[str, float] = field(init=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a demand needs at least one bundle, got {self.count}")
        object.__setattr__(self, "total", {k: v * self.count for k, v in self.bundle.items()})

    def __str__(self) -> str:
        return f"{self.what} x {describe(self.bundle)} = {describe(self.total)}"


def placeable(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many copies of ``bundle`` the nodes can hold at once: per node, the fewest copies any
    one resource allows, summed over nodes (exact for identical bundles)."""
    needed = {k: _units(v) for k, v in bundle.items() if _units(v) > 0}
    if not needed:
        raise ValueError(f"a bundle must ask for some resource, got {dict(bundle)}")
    return sum(min(_units(node.get(k, 0.0)) // amount for k, amount in needed.items()) for node in nodes)


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaler_ceiling() -> dict[str, float] | None:
    """The most of each resource the cluster's node types can add up to, as its autoscaler
    publishes them to the GCS (Ray Train's own feasibility check reads the same); None where no
    autoscaler publishes them (a local instance, a fixed cluster, an autoscaler that does not)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray._private.state import state

        ceiling = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: an older or newer Ray without it means "unknown", not a failure
        return None
    return {key: float(value) for key, value in ceiling.items()} if ceiling else None


def fits_ceiling(demand: Demand, ceiling: Mapping[str, float]) -> bool:
    """Whether ``demand``'s totals fit under ``ceiling`` (per resource, as Ray Train checks)."""
    return all(_units(ceiling.get(key, 0.0)) >= _units(amount) for key, amount in demand.total.items() if amount > 0)


@contextlib.contextmanager
def pending_demand(demand: Demand) -> Iterator[None]:
    """Hold a placement group of ``demand``'s bundles in Ray's queue while waiting for it, so an
    autoscaler sees it; removed on exit, before the worker group asks for the same resources."""
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([dict(demand.bundle)] * demand.count, strategy="PACK")
    try:
        yield
    finally:
        remove_placement_group(group)


def _cluster_summary(nodes: Sequence[Mapping[str, float]]) -> str:
    totals: dict[str, float] = {}
    for node in nodes:
        for key in ("CPU", "GPU"):
            if node.get(key, 0) or key == "CPU":
                totals[key] = totals.get(key, 0.0) + node.get(key, 0.0)
    return f"{describe(totals)} on {len(nodes)} node(s)"


def ensure_feasible(
    demand: Demand,
    wait_s: float = 0.0,
    *,
    nodes: Callable[[], list[dict[str, float]]] = alive_node_resources,
    ceiling: Callable[[], dict[str, float] | None] = autoscaler_ceiling,
    hold: Callable[[Demand], contextlib.AbstractContextManager[None]] = pending_demand,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Return how many bundles of ``demand`` the cluster can hold now, once it is sure to hold all.

    A demand the alive nodes hold returns at once. One under the autoscaler's ceiling returns too,
    after one line: the worker group's placement group then waits in Ray's queue while nodes are
    added (bounded by the worker-group start timeout). Otherwise, with ``wait_s`` > 0, the demand
    waits in Ray's queue (``hold``) while the nodes are polled, up to ``wait_s``.

    Args:
        demand: the request.
        wait_s: how long a cluster without a published ceiling may take to grow; 0 (a local
            instance, or a fixed cluster) fails at once.
        nodes: the alive nodes' total resources; ``ceiling``: the autoscaler's ceiling or None;
            ``hold``: keeps the demand in Ray's queue while waiting (all injectable for tests).

    Raises:
        ClusterError: the request exceeds the autoscaler's ceiling, or does not fit and did not
            come to fit within ``wait_s``.
    """
    current = nodes()
    room = placeable(demand.bundle, current)
    if room >= demand.count:
        return room
    limit = ceiling()
    if limit is not None:
        if not fits_ceiling(demand, limit):
            raise ClusterError(
                f"{demand} does not fit: the cluster has {_cluster_summary(current)}, and its autoscaler's node types "
                f"add up to at most {describe(limit)}"
            )
        print(
            f"mixpipe: {demand} waits for the autoscaler to add nodes: the cluster has {_cluster_summary(current)} "
            f"(room for {room}), its node types up to {describe(limit)}",
            file=sys.stderr, flush=True,
        )
        return room
    if wait_s > 0:
        print(
            f"mixpipe: waiting up to {wait_s:g}s for the cluster to offer {demand}; it has "
            f"{_cluster_summary(current)} (room for {room})",
            file=sys.stderr, flush=True,
        )
        deadline = clock() + wait_s
        with hold(demand):
            while clock() < deadline:
                sleep(min(poll_s, max(0.0, deadline - clock())))
                current = nodes()
                room = placeable(demand.bundle, current)
                if room >= demand.count:
                    return room
    waited = f" after waiting {wait_s:g}s" if wait_s > 0 else ""
    grow = "" if wait_s > 0 else " (lower the request, or on an autoscaling cluster set ray.resource_wait_s)"
    raise ClusterError(
        f"{demand} does not fit{waited}: the cluster has {_cluster_summary(current)}, room for {room}{grow}"
    )


def free_for(demand: Demand, available: Mapping[str, float]) -> str:
    """What of ``demand``'s resources is free now (``available`` leaves out a resource with
    nothing free, so it counts as 0)."""
    return describe({key: available.get(key, 0.0) for key in demand.bundle})


def queue_notice(demand: Demand, available: Mapping[str, float], timeout_s: float | str) -> str | None:
    """What to say when ``demand`` fits the cluster but its free resources (``available``, summed
    over nodes) cannot hold it now: another job holds them, and the worker group will wait in
    Ray's queue for up to ``timeout_s``. None when there is room now (as far as totals tell)."""
    if all(_units(available.get(key, 0.0)) >= _units(amount) for key, amount in demand.total.items()):
        return None
    return (f"{demand} waits in Ray's queue for resources other work holds (free now: "
            f"{free_for(demand, available)}); up to {float(timeout_s):g}s")
