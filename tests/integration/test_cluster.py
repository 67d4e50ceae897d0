"""A 2-node cluster as users have one: reached at its dashboard URL (job mode) or its GCS address
(driver mode), with an S3-protocol store, and nodes that cannot see the workspace.

One S3 server (moto's server mode, on loopback) and one 2-node cluster (cluster/'s launcher) serve
the module. The nodes run in a mount namespace where the folder holding the test workspaces is an
empty tmpfs; they get the store's endpoint and credentials in their own environment, as cluster
nodes do. In job mode the stage processes are not Ray nodes: they reach the cluster only over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from pipelines import tables
from pipelines.cluster import launcher

from .helpers import REPO, finish, git, make_workspace, run, start, wait_until

pytestmark = pytest.mark.integration

BUCKET = "mixpipe-jobs"
STORE = f"s3://{BUCKET}/store"
# Two 1-CPU nodes: the 2-worker train run spans both.
JOB_PARAMS = {
    "augment": {"methods": ["mixup"], "num_shards": 4},
    "train": {"epochs": 1, "batch_size": 32, "num_workers": 2},
    "tune": {"methods": ["mixup"], "alphas": [0.2, 1.0], "epochs": 1, "grace_period": 1, "max_concurrent_trials": 2},
    # one point per searched method (params.yaml's grids merge with these): what is tested here is
    # that a searching merge runs as a job
    "merge": {"methods": ["uniform_soup", "task_arithmetic", "ties"],
              "search": {"task_arithmetic": {"scale": [0.5]}, "ties": {"density": [0.5], "scale": [1.0]}}},
    "evaluate": {"interpolation_points": 5},
    "storage": {"shared_uri": STORE},
}
RAY_STAGES = ["augment@mixup", "merge", "train", "tune"]


@pytest.fixture(scope="module")
def secret():
    return "planted-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def s3(secret):
    """An S3 endpoint on loopback and the environment that reaches it (the secret key planted)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "mixpipe-test",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="mixpipe-test",
                 aws_secret_access_key=secret, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture(scope="module")
def hidden_root():
    """Where the workspaces live: a folder the nodes see as empty."""
    return Path(tempfile.mkdtemp(prefix="mpj-ws-", dir="/tmp"))


@pytest.fixture(scope="module")
def cluster(s3, hidden_root):
    state = Path(tempfile.mkdtemp(prefix="mpj-", dir="/tmp"))  # short: Ray's unix sockets live under it
    # fixed ports below the kernel's ephemeral range (32768+) and above Ray's worker ports
    # (10002-19999), so no local instance started meanwhile can have taken them at random
    info = launcher.start(state, workers=1, cpus_per_node=1, base_port=26300, timeout=300, hide=[hidden_root],
                          node_env={**s3, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    yield info
    launcher.stop(state)
    assert not any(launcher.is_alive(node.pid) for node in info.nodes)


@pytest.fixture(scope="module")
def client_env(cluster, s3):
    return {**s3, **cluster.env(jobs=True)}


def jobs_api(cluster, path: str = "/api/jobs/"):
    """The Jobs REST API's answer at ``path``. Plain HTTP with the cluster's token: a Ray client in
    this process would cache that token and refuse the local instances of the tests that follow."""
    token = Path(cluster.token_path).read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard_url}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def mixpipe_jobs(cluster) -> list[dict]:
    return [job for job in jobs_api(cluster) if (job.get("metadata") or {}).get("mixpipe_stage")]


def store_fs(s3):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=s3["AWS_ENDPOINT_URL"], key=s3["AWS_ACCESS_KEY_ID"],
                             secret=s3["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def repro(cluster, client_env, hidden_root):
    """`dvc repro` of the tiny DAG in job mode, in a workspace the nodes cannot see."""
    workspace = make_workspace(Path(tempfile.mkdtemp(dir=hidden_root)), JOB_PARAMS)
    started = time.monotonic()
    result = run(workspace, "dvc", "repro", env=client_env, timeout=1200)
    return workspace, result, time.monotonic() - started


def copy_of(workspace: Path, hidden_root: Path) -> Path:
    """A copy of ``workspace`` where the nodes cannot see it: the repro's own workspace stays as
    its dvc.lock says, for the tests that read it."""
    copy = Path(tempfile.mkdtemp(dir=hidden_root)) / "ws"
    shutil.copytree(workspace, copy)
    return copy


def nodes_of(info: launcher.ClusterInfo, kind: str, name: str) -> list[str]:
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
    assert all(launcher.is_alive(node.pid) for node in cluster.nodes)
    assert oct(Path(cluster.token_path).stat().st_mode & 0o777) == "0o600"


def test_the_nodes_cannot_see_the_workspaces(cluster, hidden_root):
    (hidden_root / "seen-here").write_text("only on this side")
    probe = f"import os; print('ENTRIES', os.listdir({str(hidden_root)!r}))"
    shown = run(REPO, "mixpipe", "submit", "--address", cluster.dashboard_url, "--", "python", "-c", probe,
                env={"RAY_AUTH_TOKEN_PATH": cluster.token_path})
    assert "ENTRIES []" in shown.stdout


def test_dvc_repro_runs_each_ray_stage_as_one_job(repro, cluster, s3, secret, tmp_path):
    workspace, result, seconds = repro
    out = result.stdout
    for stage in RAY_STAGES:
        assert re.search(rf"{re.escape(stage)}: job mixpipe-{re.escape(stage.replace('@', '-'))}-\w+ SUCCEEDED", out), stage
    for path in ["data/prepared/train/manifest.json", "data/shards/mixup/manifest.json", "models/base/model.safetensors",
                 "models/trials", "models/merged", "results/evaluation.parquet", "report/index.html", "metrics.json",
                 "dvclive/train/metrics.json"]:
        assert (workspace / path).exists(), path
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert set(history["world_size"]) == {2}
    assert run(workspace, "dvc", "status", env={}).stdout.strip() == "Data and pipelines are up to date."
    # the work spread over both nodes: shard tasks, and the Train workers of train and tune
    assert len(set(nodes_of(cluster, "tasks", "_shard_task"))) == 2
    assert len(set(nodes_of(cluster, "actors", "RayTrainWorker"))) == 2

    listed = mixpipe_jobs(cluster)
    assert sorted(job["metadata"]["mixpipe_stage"] for job in listed) == RAY_STAGES
    assert {job["status"] for job in listed} == {"SUCCEEDED"}
    fs = store_fs(s3)
    for job in listed:  # the staged inputs are in the store under their digests
        staged = json.loads(fs.cat(f"{BUCKET}/store/staged/{job['metadata']['mixpipe_inputs']}.json"))
        for entry in staged["files"].values():
            assert fs.exists(f"{BUCKET}/store/cas/sha256/{entry['sha256'][:2]}/{entry['sha256']}")
        # credentials stay with their owners
        assert secret not in json.dumps(job)  # entrypoint, metadata, runtime env
        assert secret not in jobs_api(cluster, f"/api/jobs/{job['submission_id']}/logs")["logs"]
    assert secret not in out + result.stderr
    for table in (workspace / "results").glob("*.parquet"):
        assert secret.encode() not in table.read_bytes()

    uploaded = [int(n) for n in re.findall(r"(\d+) bytes uploaded", out)]
    print(f"\njob-mode dvc repro: {seconds:.1f}s; inputs uploaded: {sum(uploaded)} bytes in {len(uploaded)} submissions")
    print("\n".join(line for line in out.splitlines() if " SUCCEEDED; " in line))

    # prepare and augment give the bytes a local run gives
    local = make_workspace(tmp_path, {key: value for key, value in JOB_PARAMS.items() if key != "storage"})
    run(local, sys.executable, "-m", "stages.prepare")
    run(local, sys.executable, "-m", "stages.augment", "mixup")
    for name in ["data/prepared/train/part-00000.parquet", "data/prepared/test/manifest.json", "data/shards/mixup/manifest.json",
                 *(f"data/shards/mixup/part-{index:05d}.parquet" for index in range(4))]:
        assert (workspace / name).read_bytes() == (local / name).read_bytes(), name

    again = run(workspace, "dvc", "repro", env={**s3, **cluster.env(jobs=True)})
    assert "Running stage" not in again.stdout and len(mixpipe_jobs(cluster)) == len(listed)


def test_a_killed_client_reattaches_to_its_job(repro, cluster, client_env, hidden_root):
    workspace = copy_of(repro[0], hidden_root)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["epochs"] = 2  # a new job
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = {job["submission_id"] for job in mixpipe_jobs(cluster)}
    client = start(workspace, sys.executable, "-m", "stages.train", env=client_env)

    def running_job():
        new = [job for job in mixpipe_jobs(cluster) if job["submission_id"] not in before]
        return new[0] if new and new[0]["status"] == "RUNNING" else None

    assert wait_until(lambda: running_job() is not None, timeout=120, interval=1)
    job_id = running_job()["submission_id"]
    client.send_signal(signal.SIGKILL)
    finish(client, check=False)

    again = run(workspace, sys.executable, "-m", "stages.train", env=client_env)
    assert f"train: following job {job_id}, already on the cluster" in again.stdout
    assert f"train: job {job_id} SUCCEEDED" in again.stdout
    assert {job["submission_id"] for job in mixpipe_jobs(cluster)} - before == {job_id}
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert history["epoch"].tolist() == [1, 2]


def test_a_rayjob_runs_as_the_operator_submits_it_and_job_mode_takes_its_outputs(repro, cluster, client_env, hidden_root):
    """``mixpipe rayjob train``'s manifest, submitted as KubeRay's HTTPMode does (the Jobs API with
    the manifest's entrypoint, jobId, runtime env and metadata), runs on nodes that see nothing of
    the workspace (code and inputs come from the store); running the stage in job mode afterwards
    takes its outputs without a job of its own."""
    workspace = copy_of(repro[0], hidden_root)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["epochs"] = 3  # a job no other test has run
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    made = run(workspace, sys.executable, "-m", "pipelines.cli", "rayjob", "train", env=client_env)
    manifest = yaml.safe_load(made.stdout)
    spec = manifest["spec"]
    job_id = spec["jobId"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "mixpipe"} and spec["runtimeEnvYAML"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].startswith(f"{STORE}/code/") and runtime_env["working_dir"].endswith(".zip")

    body = {"entrypoint": spec["entrypoint"], "submission_id": job_id, "runtime_env": runtime_env,
            "metadata": spec["metadata"], "entrypoint_num_cpus": spec["entrypointNumCpus"]}
    token = Path(cluster.token_path).read_text().strip()
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.load(response)["submission_id"] == job_id
    assert wait_until(lambda: jobs_api(cluster, f"/api/jobs/{job_id}")["status"] in ("SUCCEEDED", "FAILED", "STOPPED"),
                      timeout=600, interval=2)
    assert jobs_api(cluster, f"/api/jobs/{job_id}")["status"] == "SUCCEEDED", jobs_api(cluster, f"/api/jobs/{job_id}/logs")

    before = {job["submission_id"] for job in mixpipe_jobs(cluster)}
    taken = run(workspace, sys.executable, "-m", "stages.train", env=client_env)
    assert f"train: job {job_id} already succeeded; taking its outputs" in taken.stdout
    assert {job["submission_id"] for job in mixpipe_jobs(cluster)} == before
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert history["epoch"].tolist() == [1, 2, 3]


def test_queued_experiments_take_turns_on_the_cluster(repro, cluster, client_env, hidden_root):
    """`dvc queue start -j 2` with two train experiments: both jobs run at once, and each wants
    the whole cluster (2 workers x 1 CPU on two 1-CPU nodes), so one worker group waits in Ray's
    queue for the other's CPUs; both succeed."""
    workspace = copy_of(repro[0], hidden_root)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "job-mode results")  # the queue runs experiments on this commit
    before = {job["submission_id"] for job in mixpipe_jobs(cluster)}
    names = {"q-lr4": "0.04", "q-lr3": "0.03"}  # new params: new jobs
    for name, lr in names.items():
        run(workspace, "dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.optim.lr={lr}", "train", env=client_env)
    run(workspace, "dvc", "queue", "start", "-j", "2", env=client_env)

    def settled() -> str | None:
        status = run(workspace, "dvc", "queue", "status", env=client_env).stdout
        return None if re.search(r"\b(Queued|Running)\b", status) else status

    assert wait_until(lambda: settled() is not None, timeout=600, interval=3)
    status = settled()
    assert all(re.search(rf"{name}\s.*Success", status) for name in names), status

    new = [job for job in mixpipe_jobs(cluster) if job["submission_id"] not in before]
    assert sorted(job["metadata"]["mixpipe_stage"] for job in new) == ["train", "train"]
    assert sorted(job["metadata"]["dvc_experiment"] for job in new) == sorted(names)
    assert {job["status"] for job in new} == {"SUCCEEDED"}
    first, second = sorted(new, key=lambda job: job["start_time"])
    assert second["start_time"] < first["end_time"]  # side by side, not one after the other
    shown = json.loads(run(workspace, "dvc", "exp", "show", "--json", env=client_env).stdout)
    ran = {e["name"]: e["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["optim"]["lr"]
           for entry in shown for e in entry.get("experiments") or [] if e.get("name") in names}
    assert ran == {name: float(lr) for name, lr in names.items()}


@pytest.mark.parametrize(
    ("change", "env_change", "message"),
    [
        ({"ray": {"address": "ray://127.0.0.1:10001"}}, {"RAY_ADDRESS": None},
         "ray.address is a Ray Client address (ray://), which cannot run Ray Train or Tune"),
        ({}, {"RAY_ADDRESS": "http://127.0.0.1:9"}, "no Ray dashboard answered at http://127.0.0.1:9 within"),
        ({}, {"RAY_AUTH_TOKEN_PATH": "WRONG"}, "refused this client's token"),
        ({"storage": {"shared_uri": "s3://no-such-bucket/x"}}, {}, "storage.shared_uri s3://no-such-bucket/x: the bucket 'no-such-bucket' does not exist"),
        ({"storage": {"shared_uri": "ftp://host/x"}}, {}, "storage.shared_uri scheme ftp:// is not supported"),
        ({"storage": {"shared_uri": None}}, {}, "storage.shared_uri: job mode"),
    ],
    ids=["ray-client", "unreachable", "wrong-token", "no-bucket", "bad-scheme", "no-store"],
)
def test_bad_input_fails_in_one_line_naming_the_key(cluster, client_env, tmp_path, change, env_change, message):
    workspace = make_workspace(tmp_path, {**JOB_PARAMS, **{k: {**JOB_PARAMS.get(k, {}), **v} for k, v in change.items()}})
    env = {**client_env, **env_change}
    if env_change.get("RAY_AUTH_TOKEN_PATH") == "WRONG":
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        wrong.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = str(wrong)
    env = {k: v for k, v in env.items() if v is not None}
    started = time.monotonic()
    result = run(workspace, sys.executable, "-m", "stages.train", env=env, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert time.monotonic() - started < 60


def test_results_travel_to_another_clone_through_a_dvc_remote_on_the_store(repro, client_env, s3, tmp_path):
    workspace, _, _ = repro
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    run(workspace, "dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")  # AWS_ENDPOINT_URL applies
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "job-mode results")
    git(workspace, "remote", "add", "origin", str(origin))
    git(workspace, "push", "-q", "origin", "HEAD:main")
    run(workspace, "dvc", "push", env=s3)

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(clone))
    run(clone, "dvc", "pull", env=s3)
    assert run(clone, "dvc", "status", env=s3).stdout.strip() == "Data and pipelines are up to date."
    assert "Running stage" not in run(clone, "dvc", "repro", env=client_env).stdout
    assert (clone / "models/base/model.safetensors").read_bytes() == (workspace / "models/base/model.safetensors").read_bytes()


def test_driver_mode_trains_on_both_nodes_with_run_state_in_the_store(cluster, s3, hidden_root):
    """A stage that joins by the GCS address runs as a driver here, its Train workers on both
    nodes and its Ray Train state in the store (the nodes cannot see this workspace either)."""
    workspace = make_workspace(Path(tempfile.mkdtemp(dir=hidden_root)), JOB_PARAMS)
    run(workspace, sys.executable, "-m", "stages.prepare")
    trained = run(workspace, sys.executable, "-m", "stages.train", env={**s3, **cluster.env()})
    run_name = re.search(r"train: (train-\w+):", trained.stdout).group(1)
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert history["epoch"].tolist() == [1] and set(history["world_size"]) == {2}
    assert store_fs(s3).exists(f"{BUCKET}/store/ray/{run_name}")
    assert not (workspace / ".mixpipe").exists()

    # streamed: the nodes cannot read this workspace's splits, so the driver copies them to the
    # store once and the workers read them there through Ray Data; the same batches, the same run
    streaming = yaml.safe_load((workspace / "params.yaml").read_text())
    streaming["input"]["mode"], streaming["train"]["cpus_per_worker"] = "stream", 0.5  # CPU left for the reads
    (workspace / "params.yaml").write_text(yaml.safe_dump(streaming, sort_keys=False))
    streamed = run(workspace, sys.executable, "-m", "stages.train", env={**s3, **cluster.env()})
    assert "train streams its splits through Ray Data" in streamed.stderr
    assert store_fs(s3).glob(f"{BUCKET}/store/splits/*/train/manifest.json")
    again = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert again["train_loss"].tolist() == history["train_loss"].tolist()
    assert again["val_loss"].tolist() == history["val_loss"].tolist()


def test_submit_reports_a_job_and_submits_a_failed_id_again(cluster, tmp_path):
    env = {"RAY_ADDRESS": "127.0.0.1:1", "RAY_AUTH_TOKEN_PATH": cluster.token_path}  # --address wins
    command = ["mixpipe", "submit", "--address", cluster.dashboard_url, "--job-id", "mixpipe-test-flaky",
               "--metadata", "purpose=test", "--"]
    marker = tmp_path / "second-time"  # visible to the nodes: only the workspaces' folder is hidden
    flaky = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(marker)!r}).exists() else 3)"
    first = subprocess.run([*command, "python", "-c", flaky], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert first.returncode == 1 and "job mixpipe-test-flaky FAILED" in first.stderr
    marker.touch()
    again = run(tmp_path, *command, "python", "-c", flaky, env=env)
    assert "mixpipe-test-flaky FAILED; submitting mixpipe-test-flaky-a2" in again.stderr
    assert "job mixpipe-test-flaky-a2 SUCCEEDED" in again.stderr
    [job] = [job for job in jobs_api(cluster) if job["submission_id"] == "mixpipe-test-flaky-a2"]
    assert job["metadata"]["purpose"] == "test"
