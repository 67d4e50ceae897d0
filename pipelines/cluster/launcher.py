"""A multi-node Ray cluster on this one host, for tests and for trying cluster mode on a laptop.

``start`` launches a head and N worker nodes with ``ray start --block`` (one process per node, in
its own session), all bound to 127.0.0.1, each with its own temp dir and a fixed block of ports
(from ``base_port``), token authentication on with a token written into the state dir. Their
PIDs, ports and addresses go to ``<state_dir>/cluster.json``; ``stop`` ends exactly those PIDs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.cluster.session import LOCAL_TRAIN_POLL_S, PREEMPTION_WATCHER_ENV, TRAIN_POLL_ENV
from pipelines.errors import ClusterError
from pipelines.lifetime import process_stat

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
HOST = "127.0.0.1"
PORTS_PER_NODE = 10
WORKER_PORTS_PER_NODE = 100
DRAIN_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    pid: int
    temp_dir: str
    log: str
    ports: dict[str, int]


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: str
    address: str  # GCS address, what RAY_ADDRESS takes for ray.init
    dashboard_url: str  # what the Jobs API takes
    token_path: str
    nodes: list[NodeInfo]

    def env(self, jobs: bool = False) -> dict[str, str]:
        """The environment a client needs: to join as a driver (the GCS address), or with ``jobs``
        to run stages as jobs (the dashboard address)."""
        address = self.dashboard_url if jobs else self.address
        return {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}


def node_ports(base_port: int, index: int) -> dict[str, int]:
    """The fixed ports of node ``index`` (0 is the head)."""
    first = base_port + 10 + index * PORTS_PER_NODE
    worker_low = base_port + 1000 + index * WORKER_PORTS_PER_NODE
    ports = {
        "node_manager": first,
        "object_manager": first + 1,
        "dashboard_agent_listen": first + 2,
        "dashboard_agent_grpc": first + 3,
        "runtime_env_agent": first + 4,
        "metrics_export": first + 5,
        "min_worker": worker_low,
        "max_worker": worker_low + WORKER_PORTS_PER_NODE - 1,
    }
    if index == 0:
        ports.update(gcs=base_port, dashboard=base_port + 1, client_server=base_port + 2)
    return ports


def _node_command(ports: dict[str, int], temp_dir: Path, num_cpus: float, head_address: str | None) -> list[str]:
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "start", "--block", "--disable-usage-stats", f"--node-ip-address={HOST}",
               f"--num-cpus={num_cpus:g}", "--num-gpus=0", f"--temp-dir={temp_dir}"]
    flags = ["node_manager", "object_manager", "dashboard_agent_listen", "dashboard_agent_grpc",
             "runtime_env_agent", "metrics_export", "min_worker", "max_worker"]
    command += [f"--{name.replace('_', '-')}-port={ports[name]}" for name in flags]
    if head_address is None:
        command += ["--head", f"--port={ports['gcs']}", f"--dashboard-host={HOST}",
                    f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client_server']}"]
    else:
        command += [f"--address={head_address}"]
    return command


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"ray node exited with code {process.returncode}; see {log}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.5)
    raise ClusterError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s; see {log}")


def _wait_for_nodes(info: ClusterInfo, count: int, timeout: float) -> None:
    """Poll the dashboard until ``count`` nodes are alive."""
    import urllib.request

    token = Path(info.token_path).read_text().strip()
    request = urllib.request.Request(f"{info.dashboard_url}/nodes?view=summary",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    alive = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                summary = json.load(response)["data"]["summary"]
            alive = sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")
            if alive >= count:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise ClusterError(f"only {alive} of {count} nodes alive after {timeout:.0f}s")


# Runs a node's command in its own mount namespace with an empty tmpfs over each path given before
# "--" (the paths the node must not see); unshare's default propagation is private, so nothing
# mounted here shows outside.
_HIDING_SHELL = 'while [ "$1" != "--" ]; do mount -t tmpfs -o size=1m,mode=0755 mixpipe-hidden "$1" || exit 97; shift; done; shift; exec "$@"'


def hidden(command: list[str], paths: Sequence[str]) -> list[str]:
    """``command`` run where each of ``paths`` is an empty folder (Linux, root: ``unshare -m``)."""
    if not paths:
        return command
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HIDING_SHELL, "sh", *paths, "--", *command]


def start(state_dir: str | Path, workers: int = 1, cpus_per_node: float = 1, base_port: int = 46300,
          timeout: float = 120, hide: Sequence[str | Path] = (), node_env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Start a head and ``workers`` worker nodes; return how to reach them.

    Args:
        hide: folders the nodes must not see (each node runs in a mount namespace with an empty
            tmpfs over them): a workspace, to check that jobs need nothing from it.
        node_env: extra environment for the nodes (e.g. their own object-store credentials).

    Raises:
        ClusterError: a cluster from this state dir is still running, or a node failed to start.
    """
    state = Path(state_dir).resolve()
    if (state / STATE_FILE).exists() and any(is_alive(n.pid) for n in load(state).nodes):
        raise ClusterError(f"a cluster from {state} is still running; stop it first")
    state.mkdir(parents=True, exist_ok=True)
    token_path = state / TOKEN_FILE
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    hide = [str(Path(path).resolve()) for path in hide]
    for path in hide:
        if state == Path(path) or Path(path) in state.parents:
            raise ClusterError(f"the state dir {state} is inside {path}, which the nodes must not see")
    env = {**os.environ, **(node_env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    # On SIGTERM a node drains for up to this long (30 s by default, for Serve replicas behind
    # proxies) before stopping; these nodes serve nothing and `stop` should be prompt.
    env.setdefault(DRAIN_ENV, "5")
    # The nodes are processes on this machine, as a local instance's are: the same quick Train
    # polling, and no watcher for a cloud provider's preemption notices.
    env.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
    env.setdefault(PREEMPTION_WATCHER_ENV, "0")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # "0" would forbid worker nodes

    head_ports = node_ports(base_port, 0)
    address = f"{HOST}:{head_ports['gcs']}"
    nodes: list[NodeInfo] = []
    info = ClusterInfo(str(state), address, f"http://{HOST}:{head_ports['dashboard']}", str(token_path), nodes)
    try:
        for index in range(workers + 1):
            name = "head" if index == 0 else f"worker{index}"
            ports = node_ports(base_port, index)
            temp_dir = state / name
            temp_dir.mkdir(exist_ok=True)
            log = state / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    hidden(_node_command(ports, temp_dir, cpus_per_node, None if index == 0 else address), hide),
                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )
            nodes.append(NodeInfo(name, process.pid, str(temp_dir), str(log), ports))
            _save(info)
            if index == 0:
                _wait_for_port(ports["gcs"], process, log, timeout)
                _wait_for_port(ports["dashboard"], process, log, timeout)
        _wait_for_nodes(info, workers + 1, timeout)
    except BaseException:
        stop(state)
        raise
    return info


def _save(info: ClusterInfo) -> None:
    path = Path(info.state_dir) / STATE_FILE
    path.write_text(json.dumps(asdict(info), indent=2))


def load(state_dir: str | Path) -> ClusterInfo:
    path = Path(state_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"no cluster state at {path}") from None
    raw["nodes"] = [NodeInfo(**node) for node in raw["nodes"]]
    return ClusterInfo(**raw)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: once the process that started a node has exited,
    nobody may reap it (a container's PID 1 often does not), and ``kill(pid, 0)`` still succeeds."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = process_stat(pid)
    return stat is None or stat.running  # no procfs: trust kill()


def stop(state_dir: str | Path, timeout: float = 30) -> list[int]:
    """Stop the nodes recorded in ``state_dir``, workers first, by PID; return the PIDs ended.

    ``ray start --block`` stops its node's processes when it gets SIGTERM; a node still alive
    after ``timeout`` seconds gets SIGKILL.
    """
    info = load(state_dir)
    ended = []
    for node in reversed(info.nodes):
        if not is_alive(node.pid):
            continue
        os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(node.pid) and time.monotonic() < deadline:
            _reap(node.pid)
            time.sleep(0.2)
        if is_alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while is_alive(node.pid) and time.monotonic() < deadline:
                _reap(node.pid)
                time.sleep(0.1)
        ended.append(node.pid)
    return ended


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (a zombie would look alive to ``kill(pid, 0)``)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
