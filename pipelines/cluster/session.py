"""Connecting to Ray: a local loopback-only instance, or a cluster's GCS address; never forever.

All ``ray.init`` calls in mixpipe go through :func:`ray_session`. The address picks the mode, as
Ray's own tools do:

- none (neither ``RAY_ADDRESS`` nor ``ray.address``): a single-node instance sized to this machine,
  bound to 127.0.0.1, token authentication on. Several such instances may run on one machine, and
  Ray's helpers that look for "the" instance without an address then fail ("Found multiple active
  Ray instances": Train V2's placement-group cleaner died of it and tune deadlocked). So the
  instance gets a GCS port chosen here, and every process of it learns its address: the driver's
  environment for the session, the workers' through the job's runtime environment.
- ``host:port`` (or ``auto``): join that cluster as a driver. The address is probed first and
  the stage fails within ``connect_timeout_s`` when nothing answers as a Ray GCS there.
- ``http(s)://`` (the Jobs/dashboard address): job mode. A stage that uses Ray does not connect
  here at all: it runs itself as a Ray job (:mod:`pipelines.cluster.job_mode`), whose driver then
  joins its cluster through the GCS address Ray gives every job in ``RAY_ADDRESS``.
- ``ray://`` (Ray Client) is refused: Train and Tune need a driver on the cluster.

Ray is imported lazily so that the loopback setting below is in place before Ray reads it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.cluster.auth import ensure_private_token, ensure_token_auth
from pipelines.cluster.network import LOOPBACK, free_port
from pipelines.errors import ClusterError
from pipelines.urls import redact

ADDRESS_ENV = "RAY_ADDRESS"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's entrypoint
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by ray.init when it starts a head node
DEFAULT_CONNECT_TIMEOUT_S = 30.0
# Off: Ray resolves the node IP to 127.0.0.1 instead of the host's primary address. Ray reads it
# once, at import; it also stops worker nodes from joining and a driver from finding its node on a
# real cluster, so it is set only while Ray is imported for a local start, never left for children.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# What never travels to a cluster with the code (Ray also honours .gitignore). gitwildmatch
# patterns: anchored with "/", or "data" would also drop the pipelines/data package.
WORKING_DIR_EXCLUDES = ["/.git/", "/.venv/", "/.dvc/cache/", "/.dvc/tmp/", "/.mixpipe/",
                        "/data/", "/models/", "/results/", "/report/", "/dvclive/", "__pycache__/"]

# A Train V2 ray.train.report blocks until the controller's next poll of the workers, every 2 s by
# default: on a laptop-sized epoch (under a second) that wait was most of the epoch. A user's own
# setting of the variable wins; clusters keep Ray's default.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_POLL_S = "0.2"
# Train V2 starts a preemption-watcher actor per run (one more process to start on every run); the
# nodes of a local instance are this machine and are never preempted by a cloud provider.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass(frozen=True)
class RayConnection:
    """What :func:`ray_session` connected to."""

    address: str  # the GCS address (of the local instance when started_local)
    started_local: bool
    cpus: float
    gpus: float
    nodes: int

    def waits(self, ray_params: Any) -> dict[str, float]:
        """A worker group's waits here, as :class:`TrainJob` fields. On a local instance: none for
        resources it lacks (it will not grow) and Train's default for its own runs' turns. On a
        cluster: ``ray.resource_wait_s`` for nodes to be added and ``ray.queue_wait_s`` for other
        jobs to release what they hold."""
        if self.started_local:
            return {"resource_wait_s": 0.0}
        return {"resource_wait_s": ray_params.resource_wait_s, "queue_wait_s": ray_params.queue_wait_s}


def resolve_address(configured: str | None = None) -> str | None:
    """The cluster to join: ``RAY_ADDRESS`` first, then ``ray.address`` from params, else local.

    Raises:
        ClusterError: a Ray Client (``ray://``) or Jobs (``http(s)://``) address, which a stage cannot join.
    """
    address = os.environ.get(ADDRESS_ENV) or configured or None
    if address is None:
        return None
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    where = f"{ADDRESS_ENV}={redact(address)}" if os.environ.get(ADDRESS_ENV) else f"ray.address {redact(address)}"
    if scheme == "ray":
        raise ClusterError(
            f"{where}: Ray Client (ray://) cannot run Ray Train or Tune drivers; use the dashboard address "
            "http://<head>:8265 with `mixpipe submit`, or the GCS address <head>:6379 on a cluster node"
        )
    if scheme in ("http", "https"):
        raise ClusterError(
            f"{where}: a Jobs API (dashboard) address, for job mode; a Ray driver joins a cluster by its "
            "GCS address <head>:6379 from a cluster node"
        )
    if scheme:
        raise ClusterError(f"{where}: not a Ray address (expected host:port or auto)")
    return address


def jobs_address(configured: str | None = None) -> str | None:
    """The Jobs API address when the address (``RAY_ADDRESS`` first, then ``ray.address``) asks for
    job mode (``http(s)://``), else None. Inside a job Ray sets ``RAY_ADDRESS`` to the cluster's GCS
    address, so a job's own driver never finds job mode again."""
    address = os.environ.get(ADDRESS_ENV) or configured or None
    if address and address.split("://", 1)[0].lower() in ("http", "https") and "://" in address:
        return address
    return None


def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (Ray hands it the job's config)."""
    return JOB_CONFIG_ENV in os.environ


def worker_env() -> dict[str, str]:
    """Variables every worker of this process's Ray jobs gets besides Ray's own: the store's
    fsspec options, so workers open the shared store as the driver does."""
    from pipelines.storage import OPTIONS_ENV

    return {OPTIONS_ENV: os.environ[OPTIONS_ENV]} if os.environ.get(OPTIONS_ENV) else {}


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


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the duration of a block."""
    previous = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_local(num_cpus: int | None, temp_dir: str | None, num_gpus: int | None) -> str:
    """Start a local instance on a GCS port chosen here; return its address."""
    import ray

    ensure_private_token(create=True)
    address = f"{LOOPBACK}:{free_port()}"
    env_vars = {
        TRAIN_POLL_ENV: os.environ.get(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S),
        PREEMPTION_WATCHER_ENV: os.environ.get(PREEMPTION_WATCHER_ENV, "0"),
        ADDRESS_ENV: address,
        **worker_env(),
    }
    with scoped_env(**{GCS_PORT_ENV: address.rsplit(":", 1)[1]}):
        ray.init(
            runtime_env={"env_vars": env_vars},
            num_cpus=num_cpus or os.cpu_count() or 1,
            num_gpus=num_gpus,
            # Train V2's placement-group cleaner and the state API need the dashboard; loopback only.
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=free_port(),
            _node_ip_address=LOOPBACK,
            _temp_dir=temp_dir,
            configure_logging=True,
            logging_level="WARNING",
            log_to_driver=True,
        )
    started = ray.get_runtime_context().gcs_address
    if started != address:
        ray.shutdown()
        raise ClusterError(f"Ray started its GCS at {started}, not at {address} ({GCS_PORT_ENV} was ignored)")
    return address


def probe_gcs(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` unless a Ray GCS answers at ``host:port``.

    ``ray.init`` retries an unreachable address for many minutes and cannot be interrupted, so the
    address is checked first: a TCP connection, then Ray's own GCS client in a daemon thread that
    is abandoned at the deadline.

    Raises:
        ClusterError: nothing listens there, or what listens is not a GCS that accepts our token.
    """
    if address == "auto":
        return  # Ray looks for an instance on this machine and fails fast when there is none
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"ray address {address!r}: expected host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ClusterError(f"could not reach Ray at {address} within {timeout_s:g}s: {error}") from None

    from ray._raylet import GcsClient

    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["cluster_id"] = GcsClient(address=address, cluster_id=None).cluster_id
        except Exception as error:  # reported to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=connect, name="mixpipe-gcs-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "cluster_id" in outcome:
        return
    reason = f": {outcome['error']}" if "error" in outcome else ""
    raise ClusterError(
        f"no Ray GCS answered at {address} within {timeout_s:g}s{reason} (a dashboard port? stages join "
        "by the GCS address <head>:6379; raise ray.connect_timeout_s for a slow network)"
    )


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    temp_dir: str | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> RayConnection:
    """Start or join Ray (see the module docstring) unless this process is already connected.

    Args:
        address: cluster address as given in params; ``RAY_ADDRESS`` overrides it.
        num_cpus: CPUs of a local instance (default: all of this machine's).
        num_gpus: GPUs of a local instance (default: Ray's detection).
        runtime_env: runtime environment when joining a cluster (e.g. the code as ``working_dir``).
        temp_dir: Ray's session directory for a local instance.
        connect_timeout_s: how long a cluster may take to answer.

    Raises:
        ClusterError: token authentication was turned off, or the cluster cannot be reached.
    """
    resolved = resolve_address(address)
    ensure_token_auth(joining=bool(resolved))
    if not resolved:
        _import_ray_for_local_start()
    import ray
    from ray.exceptions import AuthenticationError

    started_local = False
    if not ray.is_initialized():
        try:
            if resolved:
                ensure_private_token(create=False)
                probe_gcs(resolved, connect_timeout_s)
                ray.init(address=resolved, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
            else:
                _start_local(num_cpus, temp_dir, num_gpus)
                started_local = True
        except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as error:
            where = resolved or "a local instance"
            raise ClusterError(f"could not start or reach Ray at {where}: {error}") from None
    resources = ray.cluster_resources()
    return RayConnection(
        address=ray.get_runtime_context().gcs_address,
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
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    packages: Mapping[str, Any] | None = None,
    num_gpus: int | None = None,
) -> Iterator[RayConnection]:
    """Connect for the duration of a block, and disconnect (stopping a local instance) after it.
    ``num_cpus`` and ``num_gpus`` size a local instance (as :func:`connect`).

    When joining a cluster, ``working_dir`` ships this checkout's code to every worker, so remote
    nodes import exactly the code the driver runs, and ``packages`` (a runtime env's ``pip``/``uv``
    entry) installs the pinned dependencies on them; a local instance uses this environment. Inside the block ``RAY_ADDRESS`` names the
    instance, here and in every worker of the job, so Ray's address-less helpers find it among several.
    """
    address_to_join = resolve_address(address)
    joining = bool(address_to_join)
    ensure_token_auth(joining)
    if not joining:
        _import_ray_for_local_start()
    import ray

    already = ray.is_initialized()
    runtime_env = None
    if joining and not in_ray_job():  # a job's driver keeps the job's runtime env (its code, its env)
        runtime_env = {}
        if working_dir:
            runtime_env.update(working_dir=working_dir, excludes=WORKING_DIR_EXCLUDES)
        runtime_env.update(packages or {})
        env_vars = worker_env()
        if address_to_join != "auto":  # the workers' own helpers must find this cluster among others too
            env_vars[ADDRESS_ENV] = address_to_join
        if env_vars:
            runtime_env["env_vars"] = env_vars
    connection = connect(address, num_cpus, num_gpus, runtime_env=runtime_env or None, temp_dir=temp_dir,
                         connect_timeout_s=connect_timeout_s)
    try:
        with scoped_env(**{ADDRESS_ENV: connection.address}):
            yield connection
    finally:
        if not already:
            ray.shutdown()
