"""Cluster plumbing that needs no running Ray."""

import pytest
from pathspec import PathSpec

from pipelines import cluster, local_cluster
from pipelines.errors import ClusterError


def test_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(None) is None
    assert cluster.resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:46300")
    assert cluster.resolve_address("10.0.0.5:6379") == "127.0.0.1:46300"


def test_token_auth_cannot_be_turned_off(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ClusterError, match="token authentication only"):
        cluster.connect()
    with pytest.raises(ClusterError, match="token authentication only"):
        cluster.submit_job("true", "127.0.0.1:1", ".")


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


def test_stop_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="no cluster state"):
        local_cluster.stop(tmp_path)


def test_loopback_switch_is_read_at_import_and_not_inherited(repo_root):
    import subprocess
    import sys

    probe = (
        "import os, sys\n"
        "from pipelines.cluster import _import_ray_for_local_start\n"
        "_import_ray_for_local_start()\n"
        "from ray._private import ray_constants\n"
        "print(ray_constants.ENABLE_RAY_CLUSTER, os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "None"], out.stderr
