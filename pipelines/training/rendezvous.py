"""The DDP process group, bound to the node's own address.

Ray Train's stock Torch backend lets ``torch.distributed`` create its rendezvous store, and
torch's ``TCPStore`` server listens on every interface (``*:PORT``): on a real host anyone on the
network can read and write the store of a running job with no credentials. Here rank 0 binds the
listening socket itself, to its Ray node IP (127.0.0.1 for a local instance), and hands it to the
``TCPStore`` (``master_listen_fd``). The collective transports get the interface that carries that
address (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``; a user's own setting wins), so their
sockets stay on it too.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

from pipelines.cluster.network import interface_for

INTERFACE_ENVS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
# rank 0's bound socket, kept between the two calls the backend makes on that worker
_listener: socket.socket | None = None


def bind_rendezvous() -> tuple[str, int]:
    """On rank 0: bind a listening socket to this node's Ray IP; return its address and port."""
    global _listener
    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    _listener = listener
    return host, listener.getsockname()[1]


def join_process_group(backend: str, world_rank: int, world_size: int, host: str, port: int, timeout_s: float) -> None:
    """On every rank: point the transports at ``host``'s interface, open the store, join the group."""
    global _listener
    interface = interface_for(host)
    if interface is not None:
        for name in INTERFACE_ENVS:
            os.environ.setdefault(name, interface)
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a hung collective fails, as Ray sets it
    rank, listen_fd = world_rank, None
    if rank == 0:
        if _listener is None:
            raise RuntimeError("rank 0 joined the process group before binding the rendezvous")
        listen_fd, _listener = _listener.detach(), None  # the store owns the socket from here
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, master_listen_fd=listen_fd)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


class _NodeBoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: NodeBoundTorchConfig) -> None:
        host, port = worker_group.execute_single(0, bind_rendezvous)
        worker_group.execute(_set_torch_distributed_env_vars)
        size = len(worker_group)
        pending = [
            worker_group.execute_single_async(
                rank, join_process_group, backend=backend_config.backend, world_rank=rank, world_size=size,
                host=host, port=port, timeout_s=backend_config.timeout_s,
            )
            for rank in range(size)
        ]
        ray.get(pending)


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    """Ray Train's :class:`TorchConfig` whose process group listens on the node's address only.

    ``backend`` must be given (``"gloo"`` or ``"nccl"``).
    """

    def __post_init__(self) -> None:
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {self.backend!r}")

    @property
    def backend_cls(self):
        return _NodeBoundTorchBackend
