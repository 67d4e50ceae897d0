"""Connecting to Ray: a local loopback-only instance, or an existing cluster; job submission.

All ``ray.init`` calls in mixpipe go through :func:`ray_session`. With no address (neither
``RAY_ADDRESS`` nor ``ray.address`` in params) it starts a single-node instance sized to this
machine, bound to 127.0.0.1, with token authentication on. With an address it joins that cluster.
Ray is imported lazily so that the loopback setting below is in place before Ray reads it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ClusterError

LOOPBACK = "127.0.0.1"
ADDRESS_ENV = "RAY_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Off: Ray resolves the node IP to 127.0.0.1 instead of the host's primary address. Ray reads it
# once, at import; it also stops worker nodes from joining and a driver from finding its node on a
# real cluster, so it is set only while Ray is imported for a local start, never left for children.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# What never travels to a cluster with the code (Ray also honours .gitignore). gitwildmatch
# patterns: anchored with "/", or "data" would also drop the pipelines/data package.
WORKING_DIR_EXCLUDES = ["/.git/", "/.venv/", "/.dvc/cache/", "/.dvc/tmp/", "/.mixpipe/",
                        "/data/", "/models/", "/results/", "/report/", "/dvclive/", "__pycache__/"]


@dataclass(frozen=True)
class RayConnection:
    """What :func:`ray_session` connected to."""

    address: str | None  # None: a local instance this process started
    started_local: bool
    cpus: float
    gpus: float
    nodes: int


def resolve_address(configured: str | None = None) -> str | None:
    """The cluster to join: ``RAY_ADDRESS`` first, then ``ray.address`` from params, else local."""
    return os.environ.get(ADDRESS_ENV) or configured or None


def _ensure_token_auth(joining: bool) -> None:
    """Refuse to run Ray without token authentication.

    A new local instance gets token auth (and a generated token) from Ray itself when
    ``RAY_AUTH_MODE`` is unset. Joining a cluster needs the mode set explicitly; if Ray is already
    imported its cached config must be refreshed too, which Ray's own helper does.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        raise ClusterError(
            f"{AUTH_MODE_ENV}={mode}: mixpipe runs Ray with token authentication only; unset it or set it to 'token'"
        )
    if mode is None and joining:
        if "ray" in sys.modules:
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            _enable_token_auth()
        else:
            os.environ[AUTH_MODE_ENV] = "token"


def _import_ray_for_local_start() -> None:
    if "ray" in sys.modules:
        return  # too late to matter; _node_ip_address below still pins the node to loopback
    previous = os.environ.get(_LOCAL_ONLY_ENV)
    os.environ[_LOCAL_ONLY_ENV] = "0"
    try:
        import ray  # noqa: F401
    finally:
        if previous is None:
            del os.environ[_LOCAL_ONLY_ENV]
        else:
            os.environ[_LOCAL_ONLY_ENV] = previous


# A Train V2 ray.train.report blocks until the controller's next poll of the workers, every 2 s by
# default: on a laptop-sized epoch (under a second) that wait was most of the epoch. A user's own
# setting of the variable wins; clusters keep Ray's default.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_POLL_S = "0.2"


def _start_local(num_cpus: int | None, temp_dir: str | None, num_gpus: int | None) -> None:
    import ray

    ray.init(
        runtime_env={"env_vars": {TRAIN_POLL_ENV: os.environ.get(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)}},
        num_cpus=num_cpus or os.cpu_count() or 1,
        num_gpus=num_gpus,
        # Train V2's placement-group cleaner and the state API need the dashboard; loopback only.
        include_dashboard=True,
        dashboard_host=LOOPBACK,
        _node_ip_address=LOOPBACK,
        _temp_dir=temp_dir,
        configure_logging=True,
        logging_level="WARNING",
        log_to_driver=True,
    )


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    temp_dir: str | None = None,
) -> RayConnection:
    """Start or join Ray (see the module docstring) unless this process is already connected.

    Args:
        address: cluster address as given in params; ``RAY_ADDRESS`` overrides it.
        num_cpus: CPUs of a local instance (default: all of this machine's).
        num_gpus: GPUs of a local instance (default: Ray's detection).
        runtime_env: runtime environment when joining a cluster (e.g. the code as ``working_dir``).
        temp_dir: Ray's session directory for a local instance.

    Raises:
        ClusterError: token authentication was turned off, or the cluster cannot be reached.
    """
    resolved = resolve_address(address)
    _ensure_token_auth(joining=bool(resolved))
    if not resolved:
        _import_ray_for_local_start()
    import ray
    from ray.exceptions import AuthenticationError

    started_local = False
    if not ray.is_initialized():
        try:
            if resolved:
                ray.init(address=resolved, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
            else:
                _start_local(num_cpus, temp_dir, num_gpus)
                started_local = True
        except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as error:
            where = resolved or "a local instance"
            raise ClusterError(f"could not start or reach Ray at {where}: {error}") from None
    resources = ray.cluster_resources()
    return RayConnection(
        address=resolved,
        started_local=started_local,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=sum(1 for node in ray.nodes() if node.get("Alive")),
    )


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    working_dir: str | None = None,
    temp_dir: str | None = None,
) -> Iterator[RayConnection]:
    """Connect for the duration of a block, and disconnect (stopping a local instance) after it.

    When joining a cluster, ``working_dir`` ships this checkout's code to every worker, so remote
    nodes import exactly the code the driver runs.
    """
    joining = bool(resolve_address(address))
    _ensure_token_auth(joining)
    if not joining:
        _import_ray_for_local_start()
    import ray

    already = ray.is_initialized()
    runtime_env = None
    if working_dir and joining:
        runtime_env = {"working_dir": working_dir, "excludes": WORKING_DIR_EXCLUDES}
    connection = connect(address, num_cpus, runtime_env=runtime_env, temp_dir=temp_dir)
    try:
        yield connection
    finally:
        if not already:
            ray.shutdown()


def submission_id(stage: str, fingerprint: str) -> str:
    """A job id derived from a stage and its params hash: a re-submission finds the same job."""
    return f"mixpipe-{re.sub(r'[^A-Za-z0-9_-]', '-', stage)}-{fingerprint}"


@dataclass(frozen=True)
class JobOutcome:
    submission_id: str
    status: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def submit_job(
    entrypoint: str,
    address: str | None,
    working_dir: str,
    job_id: str | None = None,
    wait: bool = True,
    log_stream=None,
    env_vars: dict[str, str] | None = None,
    entrypoint_resources: dict[str, float] | None = None,
) -> JobOutcome:
    """Submit ``entrypoint`` as a Ray job with ``working_dir`` as its code; optionally stream its logs.

    Args:
        entrypoint: the shell command the job runs on the cluster.
        address: the cluster (dashboard ``http://host:8265`` or GCS address); ``RAY_ADDRESS`` if None.
        working_dir: local directory uploaded as the job's code (minus :data:`WORKING_DIR_EXCLUDES`).
        job_id: the submission id; a job with this id that already exists is followed, not resubmitted.
        wait: block until the job ends.
        log_stream: where to copy the job's logs while waiting (default: stdout).
        env_vars: extra environment for the job.
        entrypoint_resources: custom resources the entrypoint reserves (e.g. a one-slot lock).

    Raises:
        ClusterError: no address, the cluster is unreachable, or the submission is refused.
    """
    resolved = resolve_address(address)
    if not resolved:
        raise ClusterError(f"no cluster to submit to: set {ADDRESS_ENV} or pass --address")
    _ensure_token_auth(joining=True)
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(resolved)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"could not reach the Ray jobs API at {resolved}: {error}") from None

    started = time.monotonic()
    known = {job.submission_id for job in client.list_jobs()} if job_id else set()
    if job_id not in known:
        runtime_env = {"working_dir": working_dir, "excludes": WORKING_DIR_EXCLUDES}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                entrypoint_resources=entrypoint_resources,
            )
        except RuntimeError as error:
            raise ClusterError(f"job submission refused: {error}") from None
    if not wait:
        return JobOutcome(job_id, str(client.get_job_status(job_id)), time.monotonic() - started)

    stream = log_stream or sys.stdout
    import asyncio

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            stream.write(lines)
            stream.flush()

    asyncio.run(follow())
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal:  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return JobOutcome(job_id, str(status), time.monotonic() - started)
