"""A 2-node cluster on this host (cluster/local_cluster.py): the Ray stages run against it through
RAY_ADDRESS, their work lands on both nodes, and `mixpipe submit` runs jobs on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from pipelines import tables
from pipelines.cluster import launcher as local_cluster

from .helpers import REPO, make_workspace, run

pytestmark = pytest.mark.integration

# Two 1-CPU nodes: a 2-worker train run cannot fit on one node, and shard tasks spill over.
CLUSTER_PARAMS = {
    "augment": {"num_shards": 4},
    "train": {"epochs": 2, "batch_size": 32, "num_workers": 2},
    "tune": {"methods": ["mixup"], "alphas": [0.2, 1.0], "epochs": 1, "grace_period": 1,
             "max_concurrent_trials": 2},
}


@pytest.fixture(scope="module")
def cluster():
    # a short path: Ray's unix sockets live under each node's temp dir (107-byte limit). Fixed ports
    # below the kernel's ephemeral range (32768+) and above Ray's worker ports (10002-19999), so no
    # local instance running meanwhile (another test file, in parallel) can have taken them at random
    state = Path(tempfile.mkdtemp(prefix="mpc-", dir="/tmp"))
    run(REPO, sys.executable, "cluster/local_cluster.py", "start", "--state-dir", str(state), "--workers", "1",
        "--cpus-per-node", "1", "--base-port", "26300", timeout=300)
    info = local_cluster.load(state)
    yield info
    result = run(REPO, sys.executable, "cluster/local_cluster.py", "stop", "--state-dir", str(state))
    assert "stopped 2 node process(es)" in result.stdout
    assert not any(local_cluster.is_alive(node.pid) for node in info.nodes)


def nodes_of(info: local_cluster.ClusterInfo, kind: str, name: str) -> list[str]:
    """Node ids of the cluster's tasks or actors called ``name`` (state API, run as a cluster client)."""
    query = textwrap.dedent(f"""
        import json
        from ray.util.state import list_actors, list_tasks
        if {kind!r} == "actors":
            rows = list_actors(address={info.dashboard_url!r}, filters=[("class_name", "=", {name!r})], detail=True, limit=10000)
        else:
            rows = list_tasks(address={info.dashboard_url!r}, filters=[("func_or_class_name", "=", {name!r})], detail=True, limit=10000)
        print(json.dumps([row.node_id for row in rows]))
    """)
    return json.loads(run(REPO, sys.executable, "-c", query, env=info.env()).stdout.strip().splitlines()[-1])


def test_cluster_nodes_are_up_on_loopback(cluster):
    assert [node.name for node in cluster.nodes] == ["head", "worker1"]
    assert cluster.address == "127.0.0.1:26300" and cluster.dashboard_url == "http://127.0.0.1:26301"
    assert all(local_cluster.is_alive(node.pid) for node in cluster.nodes)
    assert oct(Path(cluster.token_path).stat().st_mode & 0o777) == "0o600"


def test_ray_stages_run_on_both_nodes(cluster, tmp_path):
    workspace = make_workspace(tmp_path, CLUSTER_PARAMS)
    run(workspace, sys.executable, "-m", "stages.prepare")
    env = cluster.env()
    augment = run(workspace, sys.executable, "-m", "stages.augment", "mixup", env=env)
    assert "augment mixup: 4 shards, 1259 rows, on 2 node(s)" in augment.stdout
    assert len(set(nodes_of(cluster, "tasks", "_shard_task"))) == 2

    run(workspace, sys.executable, "-m", "stages.train", env=env)
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert history["epoch"].tolist() == [1, 2] and set(history["world_size"]) == {2}
    train_nodes = nodes_of(cluster, "actors", "RayTrainWorker")
    assert len(train_nodes) == 2 and len(set(train_nodes)) == 2

    run(workspace, sys.executable, "-m", "stages.tune", env=env)
    trials = tables.read_table(str(workspace / "results/trials.parquet"), "trials")
    assert trials["trial"].tolist() == ["t00-mixup-a0.2", "t01-mixup-a1"]
    # run state went where the stage said (not ~/ray_results): the train run, and the sweep with one
    # Train run per trial, its ledger and Tune's bookkeeping
    runs = sorted(p.name for p in (workspace / ".mixpipe/ray").iterdir())
    assert [name.split("-")[0] for name in runs] == ["train", "tune"]
    sweep = workspace / ".mixpipe/ray" / runs[1]
    assert sorted(p.name for p in sweep.iterdir()) == ["ledger", "t00-mixup-a0.2", "t01-mixup-a1", "tune"]


def test_submit_runs_a_job_with_the_code_and_reports_its_status(cluster, tmp_path):
    workspace = make_workspace(tmp_path, {})
    probe = "import ray, pipelines; ray.init(); print('NODES', sum(n['Alive'] for n in ray.nodes()), pipelines.__file__)"
    command = ["mixpipe", "submit", "--address", cluster.dashboard_url, "--working-dir", str(workspace)]
    first = run(workspace, *command, "--job-id", "mixpipe-test-probe", "--", "python", "-c", probe, env=cluster.env())
    assert "NODES 2" in first.stdout
    # the job imported the uploaded code, not this checkout
    assert str(REPO) not in first.stdout.split("NODES 2", 1)[1].splitlines()[0]
    assert "job mixpipe-test-probe SUCCEEDED" in first.stderr
    # the same id again follows the finished job instead of submitting a new one
    again = run(workspace, *command, "--job-id", "mixpipe-test-probe", "--", "python", "-c", "raise SystemExit(1)",
                env=cluster.env())
    assert "job mixpipe-test-probe SUCCEEDED" in again.stderr
    failing = subprocess.run([*command, "--", "python", "-c", "raise SystemExit(3)"], cwd=workspace,
                             env={**os.environ, **cluster.env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                             capture_output=True, text=True, timeout=300)
    assert failing.returncode == 1 and "FAILED" in failing.stderr
