"""Ray plumbing: connecting (local instance or cluster), resources and deadlines, jobs, and a
multi-node launcher on one host (:mod:`pipelines.cluster.launcher`)."""

from pipelines.cluster.jobs import JobOutcome, submission_id, submit_job
from pipelines.cluster.resources import Demand, ensure_feasible, placeable
from pipelines.cluster.session import (
    WORKING_DIR_EXCLUDES,
    RayConnection,
    connect,
    probe_gcs,
    ray_session,
    resolve_address,
)

__all__ = [
    "WORKING_DIR_EXCLUDES", "Demand", "JobOutcome", "RayConnection", "connect", "ensure_feasible", "placeable",
    "probe_gcs", "ray_session", "resolve_address", "submission_id", "submit_job",
]
