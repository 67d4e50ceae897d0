"""Cluster plumbing that needs no running Ray."""

import re
import socket
import stat
import time

import pytest
from pathspec import PathSpec

from pipelines import cluster
from pipelines.cluster import launcher as local_cluster
from pipelines.cluster.network import free_port
from pipelines.errors import ClusterError


def test_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(None) is None
    assert cluster.resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:46300")
    assert cluster.resolve_address("10.0.0.5:6379") == "127.0.0.1:46300"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ray://head:10001", "Ray Client (ray://) cannot run Ray Train or Tune drivers; use the dashboard address"),
        ("http://head:8265", "a Jobs API (dashboard) address"),
        ("redis://head:6379", "not a Ray address"),
    ],
)
def test_addresses_a_stage_cannot_join_are_refused_in_one_line(monkeypatch, address, message):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match=re.escape(message)) as caught:
        cluster.resolve_address(address)
    assert str(caught.value).startswith(f"ray.address {address}: ") and "\n" not in str(caught.value)


def test_a_closed_port_fails_at_once():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"could not reach Ray at 127.0.0.1:{port} within 5s"):
        cluster.probe_gcs(f"127.0.0.1:{port}", timeout_s=5)
    assert time.monotonic() - started < 5


def test_a_port_that_is_not_a_gcs_fails_within_the_timeout(monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("0" * 64)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ClusterError, match=f"no Ray GCS answered at {address} within 2s"):
            cluster.probe_gcs(address, timeout_s=2)
        # the TCP connect is instant here, so the whole wait is the GCS probe's 2 s (plus thread start)
        assert time.monotonic() - started < 4


def test_token_auth_cannot_be_turned_off(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ClusterError, match="token authentication only"):
        cluster.connect()
    with pytest.raises(ClusterError, match="token authentication only"):
        cluster.submit_job("true", "http://127.0.0.1:1", ".")


def test_submit_needs_an_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match="set RAY_ADDRESS or pass --address"):
        cluster.submit_job("true", None, ".")


def test_submission_ids_are_derived_and_safe():
    assert cluster.submission_id("augment@mixup", "abc123") == "mixpipe-augment-mixup-abc123"


def test_working_dir_excludes_outputs_but_not_packages():
    spec = PathSpec.from_lines("gitwildmatch", cluster.WORKING_DIR_EXCLUDES)
    kept = ["pipelines/data/io.py", "stages/train.py", "params.yaml", "dvc.yaml", "pipelines/models/zoo.py"]
    dropped = ["data/prepared/train.parquet", "models/base/model.safetensors", ".venv/bin/python",
               ".dvc/cache/files/md5/ab/cd", "results/trials.parquet", "pipelines/__pycache__/a.pyc", ".git/HEAD"]
    assert [p for p in kept if spec.match_file(p)] == []
    assert [p for p in dropped if not spec.match_file(p)] == []


def test_local_cluster_nodes_get_disjoint_loopback_ports(tmp_path):
    ports = [local_cluster.node_ports(46300, i) for i in range(4)]
    singles = [v for p in ports for k, v in p.items() if k not in ("min_worker", "max_worker")]
    ranges = [range(p["min_worker"], p["max_worker"] + 1) for p in ports]
    assert len(singles) == len(set(singles))
    assert not any(s in r for s in singles for r in ranges)
    assert all(a.stop <= b.start for a, b in zip(ranges, ranges[1:], strict=False))
    head = local_cluster._node_command(ports[0], tmp_path / "head", 1, None)
    worker = local_cluster._node_command(ports[1], tmp_path / "w1", 1, "127.0.0.1:46300")
    for command in (head, worker):
        assert "--node-ip-address=127.0.0.1" in command and "--block" in command
    assert "--dashboard-host=127.0.0.1" in head and "--head" in head
    assert f"--temp-dir={tmp_path / 'w1'}" in worker and "--address=127.0.0.1:46300" in worker


def test_a_missing_token_is_made_private_and_a_readable_one_is_narrowed(monkeypatch, tmp_path, capsys):
    from pipelines.cluster.auth import ensure_private_token

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ensure_private_token(create=False) == tmp_path / ".ray" / "auth_token"  # joining: nothing made up
    assert not (tmp_path / ".ray").exists()
    path = ensure_private_token(create=True)
    assert path == tmp_path / ".ray" / "auth_token" and len(path.read_text()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert ensure_private_token(create=True) == path and path.read_text() == token  # kept, not regenerated
    path.chmod(0o644)  # what Ray's own generator leaves with the usual umask
    ensure_private_token(create=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "was readable by other users; it is now 0600" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "inline")
    assert ensure_private_token(create=True) is None


def test_stop_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="no cluster state"):
        local_cluster.stop(tmp_path)


def test_loopback_switch_is_read_at_import_and_not_inherited(repo_root):
    import subprocess
    import sys

    probe = (
        "import os, sys\n"
        "from pipelines.cluster.session import _import_ray_for_local_start\n"
        "_import_ray_for_local_start()\n"
        "from ray._private import ray_constants\n"
        "print(ray_constants.ENABLE_RAY_CLUSTER, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "None"], out.stderr


def test_identical_bundles_are_counted_per_node_in_ray_fixed_point():
    from pipelines.cluster import placeable

    assert placeable({"CPU": 1}, [{"CPU": 2}]) == 2
    assert placeable({"CPU": 0.1}, [{"CPU": 0.3}]) == 3  # 0.3 / 0.1 is 2.999... in floats
    # a GPU bundle fits only where GPUs are; CPUs on a GPU-less node do not help
    assert placeable({"CPU": 1, "GPU": 1}, [{"CPU": 8, "GPU": 2}, {"CPU": 16}]) == 2
    # two 1.5-CPU workers do not fit two 2-CPU nodes' 4 CPUs as one pool would suggest... they do, one per node
    assert placeable({"CPU": 1.5}, [{"CPU": 2}, {"CPU": 2}]) == 2
    assert placeable({"CPU": 3}, [{"CPU": 2}, {"CPU": 2}]) == 0
    with pytest.raises(ValueError, match="must ask for some resource"):
        placeable({"CPU": 0}, [{"CPU": 2}])


def test_an_infeasible_demand_fails_at_once_in_one_line():
    from pipelines.cluster import Demand, ensure_feasible

    demand = Demand("train.num_workers: 64 worker(s)", {"CPU": 1.0}, 64)
    waits = []
    with pytest.raises(ClusterError) as caught:
        ensure_feasible(demand, 0, nodes=lambda: [{"CPU": 2.0, "memory": 8e9}], ceiling=lambda: None, sleep=waits.append)
    assert str(caught.value) == (
        "train.num_workers: 64 worker(s) x {CPU: 1} = {CPU: 64} does not fit: the cluster has {CPU: 2} on 1 node(s), "
        "room for 2 (lower the request, or on an autoscaling cluster set ray.resource_wait_s)"
    )
    assert waits == []
    assert ensure_feasible(Demand("tune.num_workers: 1 worker(s)", {"CPU": 1.0}), nodes=lambda: [{"CPU": 2.0}]) == 2


def test_a_growing_cluster_is_waited_for_once_with_the_demand_queued_and_only_up_to_the_deadline(capsys):
    import contextlib

    from pipelines.cluster import Demand, ensure_feasible

    demand = Demand("train.num_workers: 2 worker(s)", {"CPU": 1.0, "GPU": 1.0}, 2)
    now = [0.0]
    sizes = iter([[{"CPU": 4.0}], [{"CPU": 4.0}], [{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}], [{"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}]])
    held = []

    @contextlib.contextmanager
    def hold(what):
        # an autoscaler adds nodes for pending demand only: the demand stands in Ray's queue while polled
        held.append(("queued", what))
        yield
        held.append(("removed", what))

    def sleep(seconds):
        assert held == [("queued", demand)]
        now[0] += seconds

    waits = {"ceiling": lambda: None, "hold": hold, "clock": lambda: now[0], "sleep": sleep, "poll_s": 5}
    room = ensure_feasible(demand, 600, nodes=lambda: next(sizes), **waits)
    assert room == 2 and now[0] == 15 and held == [("queued", demand), ("removed", demand)]
    err = capsys.readouterr().err
    assert err.count("waiting up to 600s for the cluster to offer train.num_workers: 2 worker(s) x {CPU: 1, GPU: 1}") == 1
    never = iter(lambda: [{"CPU": 4.0}], None)
    now[0], held[:] = 0.0, []
    with pytest.raises(ClusterError, match=r"does not fit after waiting 30s: the cluster has \{CPU: 4\} on 1 node\(s\), room for 0$"):
        ensure_feasible(demand, 30, nodes=lambda: next(never), **waits)
    assert now[0] == 30 and held[-1] == ("removed", demand)


def test_under_the_autoscalers_ceiling_a_demand_is_left_to_queue_and_above_it_fails_at_once(capsys):
    from pipelines.cluster import Demand, ensure_feasible

    demand = Demand("train.num_workers: 2 worker(s)", {"CPU": 1.0, "GPU": 1.0}, 2)
    idle = [{"CPU": 4.0}]  # the head only: the GPU group idles at zero nodes

    def never(*_):
        raise AssertionError("no polling and no queued demand of our own: the worker group's own queues")

    room = ensure_feasible(demand, 0, nodes=lambda: idle, ceiling=lambda: {"CPU": 36.0, "GPU": 4.0}, hold=never, sleep=never)
    assert room == 0
    assert capsys.readouterr().err == (
        "mixpipe: train.num_workers: 2 worker(s) x {CPU: 1, GPU: 1} = {CPU: 2, GPU: 2} waits for the autoscaler to add "
        "nodes: the cluster has {CPU: 4} on 1 node(s) (room for 0), its node types up to {CPU: 36, GPU: 4}\n"
    )
    with pytest.raises(ClusterError) as caught:
        ensure_feasible(demand, 600, nodes=lambda: idle, ceiling=lambda: {"CPU": 36.0, "GPU": 1.0}, hold=never, sleep=never)
    assert str(caught.value) == (
        "train.num_workers: 2 worker(s) x {CPU: 1, GPU: 1} = {CPU: 2, GPU: 2} does not fit: the cluster has {CPU: 4} on "
        "1 node(s), and its autoscaler's node types add up to at most {CPU: 36, GPU: 1}"
    )


def test_a_busy_cluster_is_announced_once_and_waited_for_by_the_queue_bound():
    from pipelines.cluster import Demand
    from pipelines.cluster.resources import queue_notice
    from pipelines.cluster.session import RayConnection
    from pipelines.config import RayParams
    from pipelines.training.job import LOCAL_QUEUE_WAIT_S

    demand = Demand("train.num_workers: 2 worker(s)", {"CPU": 1.0}, 2)
    assert queue_notice(demand, {"CPU": 2.0, "memory": 1e9}, "86400") is None
    assert queue_notice(demand, {"CPU": 1.0}, "86400") == (
        "train.num_workers: 2 worker(s) x {CPU: 1} = {CPU: 2} waits in Ray's queue for resources other work holds "
        "(free now: {CPU: 1}); up to 86400s"
    )
    params = RayParams(resource_wait_s=30, queue_wait_s=600)
    local = RayConnection("127.0.0.1:6379", started_local=True, cpus=2, gpus=0, nodes=1)
    remote = RayConnection("head:6379", started_local=False, cpus=2, gpus=0, nodes=2)
    assert local.waits(params) == {"resource_wait_s": 0.0}  # the TrainJob default, LOCAL_QUEUE_WAIT_S, stays
    assert remote.waits(params) == {"resource_wait_s": 30, "queue_wait_s": 600}
    assert LOCAL_QUEUE_WAIT_S == 60.0 and RayParams().queue_wait_s == 86400.0
    with pytest.raises(ValueError, match="queue_wait_s"):
        RayParams(queue_wait_s=0)


def test_the_rendezvous_interface_is_the_one_holding_the_node_address():
    from pipelines.cluster.network import interface_for

    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("203.0.113.7") is None  # an address no interface here holds (TEST-NET-3)
    assert interface_for("not an address") is None
