"""Job mode without a cluster: dvc.yaml resolution, content addressing, submission ids, the
attach/resubmit decisions, and a whole client run against a fake Jobs API and an in-memory store."""

from __future__ import annotations

import asyncio
import io
import json
import shlex
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest

from pipelines import storage
from pipelines.cluster import jobs, staging
from pipelines.cluster.job_mode import JobRequest, run_stage_as_job
from pipelines.cluster.remote_stage import RemoteStage, outputs_url
from pipelines.cluster.remote_stage import run as run_remote
from pipelines.cluster.stage_io import StageIO, find_stage, stages
from pipelines.config import load_params
from pipelines.errors import ClusterError, ConfigError

REPO = Path(__file__).resolve().parents[2]


# --- what a stage reads and writes ---------------------------------------------------------------

def test_stage_io_agrees_with_dvc_on_every_stage():
    """Inputs and outputs read from dvc.yaml are exactly DVC's own deps (minus code) and outs."""
    from dvc.repo import Repo

    values = load_params(REPO / "params.yaml").model_dump(mode="json")
    ours = stages(REPO / "dvc.yaml", values)
    with Repo(str(REPO)) as repo:
        theirs = {stage.addressing: stage for stage in repo.index.stages}
    assert set(ours) == set(theirs)
    for name, stage in theirs.items():
        deps = [dep.def_path for dep in stage.deps if not dep.def_path.startswith(("stages/", "pipelines/"))
                and type(dep).__name__ != "ParamsDependency"]
        assert list(ours[name].inputs) == deps, name
        assert sorted(ours[name].outputs) == sorted(out.def_path for out in stage.outs), name


def test_a_stage_is_found_by_its_dvc_name_or_its_command():
    values = load_params(REPO / "params.yaml").model_dump(mode="json")
    by_command = find_stage(REPO / "dvc.yaml", values, ["python", "-m", "stages.augment", "cutmix"])
    assert by_command.name == "augment@cutmix"
    assert by_command.outputs == ("data/shards/cutmix", "results/plots/augment/cutmix.png")
    assert find_stage(REPO / "dvc.yaml", values, [], dvc_name="train").inputs == (
        "results/params_check.json", "data/prepared/train", "data/prepared/val", "data/shards")
    with pytest.raises(ConfigError, match="no stage whose command is 'python -m stages.augment nope'"):
        find_stage(REPO / "dvc.yaml", values, ["python", "-m", "stages.augment", "nope"])


# --- content addressing --------------------------------------------------------------------------

def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_blobs_are_named_by_content_and_sent_once(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    workspace = tmp_path / "ws"
    write_tree(workspace, {"data/a.bin": b"alpha", "data/sub/b.bin": b"beta", "data/copy.bin": b"alpha", "one.txt": b"x"})
    manifest = staging.scan(workspace, ["data", "one.txt"])
    assert manifest.roots == {"data": "dir", "one.txt": "file"}
    assert manifest.files["data/a.bin"]["sha256"] == storage.sha256_bytes(b"alpha")
    first = staging.upload(workspace, manifest, store)
    assert (first.files, first.bytes) == (3, len(b"alpha") + len(b"beta") + len(b"x"))  # the copy is one blob
    assert Path(tmp_path / "store" / staging.CAS / manifest.files["data/a.bin"]["sha256"][:2]).is_dir()
    again = staging.upload(workspace, staging.scan(workspace, ["data", "one.txt"]), store)
    assert (again.files, again.bytes, again.skipped) == (0, 0, 3)
    assert staging.scan(workspace, ["one.txt", "data"]).digest == manifest.digest  # order does not matter
    (workspace / "data/a.bin").write_bytes(b"changed")
    assert staging.scan(workspace, ["data", "one.txt"]).digest != manifest.digest


def test_materialize_replaces_each_root_exactly_and_checks_digests(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    source, target = tmp_path / "src", tmp_path / "dst"
    write_tree(source, {"models/m/w.bin": b"weights", "results/t.parquet": b"table"})
    manifest, _ = staging.publish(source, ["models/m", "results/t.parquet"], store, f"{store}/out.json")
    write_tree(target, {"models/m/stale.bin": b"old", "results/t.parquet": b"old table", "keep.txt": b"k"})
    staging.materialize(staging.read_manifest(f"{store}/out.json"), store, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "keep.txt", "models/m/w.bin", "results/t.parquet"]
    assert (target / "results/t.parquet").read_bytes() == b"table"

    digest = manifest.files["models/m/w.bin"]["sha256"]
    Path(staging.blob_url(store, digest).removeprefix("file://")).write_bytes(b"tampered")
    with pytest.raises(Exception, match="does not match its digest"):
        staging.materialize(manifest, store, target)
    assert (target / "models/m/w.bin").read_bytes() == b"weights"  # the failed fetch changed nothing


def test_a_missing_input_is_named():
    with pytest.raises(Exception, match="data/prepared/train.parquet: no such file or folder"):
        staging.scan(Path("/nonexistent"), ["data/prepared/train.parquet"])


# --- decisions -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("existing", "action", "job_id", "previous"),
    [
        ({}, "submit", "base", None),
        ({"other": "FAILED"}, "submit", "base", None),
        ({"base": "RUNNING"}, "attach", "base", None),
        ({"base": "PENDING"}, "attach", "base", None),
        ({"base": "SUCCEEDED"}, "take", "base", None),
        ({"base": "FAILED"}, "submit", "base-a2", "base"),
        ({"base": "FAILED", "base-a2": "STOPPED"}, "submit", "base-a3", "base-a2"),
        ({"base": "FAILED", "base-a2": "SUCCEEDED"}, "take", "base-a2", None),
        ({"base": "SUCCEEDED", "base-a10": "RUNNING", "base-a9": "FAILED"}, "attach", "base-a10", None),
        ({"base-ax": "FAILED", "base-extra": "RUNNING"}, "submit", "base", None),
    ],
)
def test_decide_follows_the_latest_attempt(existing, action, job_id, previous):
    decision = jobs.decide("base", existing)
    assert (decision.action, decision.job_id, decision.previous) == (action, job_id, previous)


def request_for(tmp_path: Path, values: dict, code: str = "c0", forward: tuple[str, ...] = ()) -> JobRequest:
    io_ = StageIO("copy", f"{shlex.quote(sys.executable)} -c {shlex.quote(COPY)}", ("in.txt",), ("out",), ("copy",))
    return JobRequest(io_, values, code, "memory://bucket/mixpipe", forward)


def test_the_fingerprint_covers_inputs_stage_params_code_and_store(tmp_path):
    values = {"copy": {"upper": True}, "other": 1}
    base = request_for(tmp_path, values)
    assert base.fingerprint("d1") == request_for(tmp_path, {**values, "other": 2}).fingerprint("d1")
    assert base.fingerprint("d1") != base.fingerprint("d2")
    assert base.fingerprint("d1") != request_for(tmp_path, {**values, "copy": {"upper": False}}).fingerprint("d1")
    assert base.fingerprint("d1") != request_for(tmp_path, values, code="c1").fingerprint("d1")
    assert jobs.submission_id("augment@mixup", "ab12") == "mixpipe-augment-mixup-ab12"


def test_prefixed_writer_prefixes_whole_lines():
    out = io.StringIO()
    writer = jobs.PrefixedWriter(out, "[train] ")
    writer.write("epoch 1")
    writer.write(" done\nepoch 2\n\nlast")
    writer.close()
    assert out.getvalue() == "[train] epoch 1 done\n[train] epoch 2\n[train] \n[train] last\n"


def test_credentials_are_not_forwarded_or_put_in_metadata(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert jobs.forwarded_env(["AWS_ENDPOINT_URL", "UNSET_VARIABLE"]) == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    with pytest.raises(ClusterError, match="AWS_SECRET_ACCESS_KEY: will not forward a credential"):
        jobs.forwarded_env(["AWS_SECRET_ACCESS_KEY"])
    assert jobs.metadata_pairs(["team=mix", "note=a=b"]) == {"team": "mix", "note": "a=b"}
    with pytest.raises(ClusterError, match="--metadata api_token: job metadata is public"):
        jobs.metadata_pairs(["api_token=x"])
    with pytest.raises(ClusterError, match="expected KEY=VALUE"):
        jobs.metadata_pairs(["novalue"])


# --- a whole client run against a fake Jobs API ------------------------------------------------

COPY = "import pathlib; pathlib.Path('out').mkdir(); pathlib.Path('out/o.txt').write_text(open('in.txt').read().upper())"


class FakeJobs:
    """The parts of ``JobSubmissionClient`` job mode uses. A submitted job runs at once, in-process,
    as the cluster would: remote_stage in a fresh folder that is not the client's workspace."""

    def __init__(self, scratch: Path, existing: dict[str, str] | None = None, fail: bool = False) -> None:
        self.scratch, self.fail = scratch, fail
        self.status = dict(existing or {})
        self.submitted: list[dict] = []
        self.logs: dict[str, str] = {}
        self.stopped: list[str] = []

    def list_jobs(self):
        return [type("Job", (), {"submission_id": k, "status": v}) for k, v in self.status.items()]

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        job_id = kwargs["submission_id"]
        argv = shlex.split(kwargs["entrypoint"])
        assert argv[:3] == ["python", "-m", "pipelines.cluster.remote_stage"]
        spec = RemoteStage.from_json(argv[3])
        folder = self.scratch / uuid.uuid4().hex
        folder.mkdir()
        code = 1 if self.fail else run_remote(spec, Path(kwargs["runtime_env"]["working_dir"]), folder)
        self.status[job_id] = "SUCCEEDED" if code == 0 else "FAILED"
        self.logs[job_id] = f"ran {spec.stage}\nexit {code}\n"
        return job_id

    async def tail_job_logs(self, job_id):
        for line in self.logs.get(job_id, "").splitlines(keepends=True):
            yield line

    def get_job_status(self, job_id):
        return self.status[job_id]

    def get_job_info(self, job_id):
        return type("Info", (), {"message": "the entrypoint exited with 1"})

    def stop_job(self, job_id):
        self.stopped.append(job_id)


@pytest.fixture
def memory_store():
    fs = fsspec.filesystem("memory")
    fs.mkdir("/bucket")
    yield "memory://bucket/mixpipe"
    fs.rm("/bucket", recursive=True)


def client_run(monkeypatch, fake: FakeJobs, workspace: Path, request: JobRequest):
    monkeypatch.setattr(jobs, "jobs_client", lambda address, timeout: fake)
    out = io.StringIO()
    report = run_stage_as_job(request, "http://127.0.0.1:1", workspace, out)
    return report, out.getvalue()


def test_a_stage_runs_as_a_job_and_a_rerun_takes_its_outputs(monkeypatch, tmp_path, memory_store):
    workspace = tmp_path / "ws"
    write_tree(workspace, {"in.txt": b"mixed samples"})
    fake = FakeJobs(tmp_path)
    request = request_for(tmp_path, {"copy": {"upper": True}})
    report, log = client_run(monkeypatch, fake, workspace, request)
    assert (workspace / "out/o.txt").read_text() == "MIXED SAMPLES"
    assert report.action == "submit" and report.job_id.startswith("mixpipe-copy-") and report.uploaded_bytes == 13
    assert f"[copy] ran copy\n" in log and f"copy: job {report.job_id} SUCCEEDED" in log
    submitted = fake.submitted[0]
    assert submitted["submission_id"] == report.job_id and submitted["runtime_env"]["working_dir"] == str(workspace)
    assert submitted["metadata"]["mixpipe_stage"] == "copy" and submitted["entrypoint_num_gpus"] is None

    (workspace / "out/o.txt").write_text("edited")
    again, log = client_run(monkeypatch, fake, workspace, request)
    assert (again.action, again.job_id, again.uploaded_bytes) == ("take", report.job_id, 0)
    assert len(fake.submitted) == 1 and (workspace / "out/o.txt").read_text() == "MIXED SAMPLES"


def test_a_running_job_is_followed_and_a_failed_one_resubmitted(monkeypatch, tmp_path, memory_store):
    workspace = tmp_path / "ws"
    write_tree(workspace, {"in.txt": b"abc"})
    request = request_for(tmp_path, {"copy": {}})
    failing = FakeJobs(tmp_path, fail=True)
    with pytest.raises(ClusterError, match=r"copy: job mixpipe-copy-\w+ FAILED: the entrypoint exited with 1"):
        client_run(monkeypatch, failing, workspace, request)
    first = failing.submitted[0]["submission_id"]
    failing.fail = False
    report, log = client_run(monkeypatch, failing, workspace, request)
    assert report.job_id == f"{first}-a2" and f"job {first} FAILED; submitting {first}-a2" in log

    # a job still running (its client was killed) is followed, not submitted again
    running = FakeJobs(tmp_path, existing={first: "RUNNING"})
    running.logs[first] = "still going\n"

    def finish(job_id):
        staging.publish(workspace, ["in.txt"], request.store, outputs_url(request.store, job_id))
        running.status[job_id] = "SUCCEEDED"
        return "RUNNING"

    monkeypatch.setattr(running, "get_job_status", lambda job_id: finish(job_id) if running.status[job_id] == "RUNNING"
                        else running.status[job_id])
    report, log = client_run(monkeypatch, running, workspace, request)
    assert report.action == "attach" and running.submitted == [] and "[copy] still going" in log


def test_a_planted_secret_reaches_no_job_field_and_no_log(monkeypatch, tmp_path, memory_store):
    secret = "planted-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    workspace = tmp_path / "ws"
    write_tree(workspace, {"in.txt": b"abc"})
    fake = FakeJobs(tmp_path)
    _, log = client_run(monkeypatch, fake, workspace, request_for(tmp_path, {"copy": {}}, forward=("AWS_ENDPOINT_URL",)))
    submitted = json.dumps(fake.submitted, default=str)
    assert secret not in submitted and secret not in log
    assert fake.submitted[0]["runtime_env"]["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert fake.submitted[0]["metadata"]["dvc_experiment"] == "exp-1"
    fs = fsspec.filesystem("memory")
    assert not any(secret.encode() in fs.cat(path) for path in fs.find("/bucket"))


def test_job_mode_needs_an_object_store():
    from pipelines.cluster.job_mode import require_store

    with pytest.raises(ConfigError, match="storage.shared_uri: job mode .* needs a store"):
        require_store(None, "job mode (http://head:8265)")
    with pytest.raises(ConfigError, match="needs an object store"):
        require_store("/mnt/shared", "http://head:8265")


def test_follow_returns_the_final_status():
    fake = FakeJobs(Path("/nonexistent"), existing={"j": "SUCCEEDED"})
    fake.logs["j"] = "a\nb"
    out = io.StringIO()
    assert jobs.follow(fake, "j", out, "[s] ") == "SUCCEEDED"
    assert out.getvalue() == "[s] a\n[s] b\n"
    assert asyncio.run(_collect(fake.tail_job_logs("j"))) == ["a\n", "b"]


async def _collect(generator):
    return [item async for item in generator]


# --- the no-image route: ray.runtime_env ------------------------------------------------------


def test_the_runtime_env_pins_every_direct_dependency_but_ray_at_its_constraints_version():
    import tomllib

    from ray.runtime_env import RuntimeEnv

    from pipelines.cluster.runtime_env import canonical, constraint_pins, packages_env

    root = Path(__file__).resolve().parents[2]
    pins = constraint_pins((root / "requirements/constraints.txt").read_text())
    pip = packages_env("pip", root)
    listed = dict(p.split("==") for p in pip["pip"]["packages"])
    direct = {canonical(d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip())
              for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert set(listed) == direct - {"ray"} and all(listed[name] == pins[name] for name in listed)
    assert listed["torch"] == "2.13.0"  # this machine's +cpu tag dropped: PyPI's default build on the nodes
    assert pip["pip"]["pip_check"] is False
    assert packages_env("uv", root) == {"uv": {"packages": pip["pip"]["packages"]}}
    assert packages_env(None, root) == {}
    for entry in (pip, packages_env("uv", root)):
        RuntimeEnv(working_dir=str(root), **entry)  # Ray's own validation of the fields


def test_a_dependency_without_a_pin_is_named(tmp_path):
    from pipelines.cluster.runtime_env import packages_env

    (tmp_path / "requirements").mkdir()
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["ray[train]==2.60.0", "numpy>=2", "Py_YAML>=6"]\n')
    (tmp_path / "requirements/constraints.txt").write_text("# pins\nnumpy==2.4.6\nray==2.60.0\n")
    with pytest.raises(ConfigError, match=r"requirements/constraints.txt pins no version of py-yaml, a dependency in pyproject.toml"):
        packages_env("pip", tmp_path)
    (tmp_path / "requirements/constraints.txt").write_text("numpy==2.4.6\npy-yaml==6.0.3\n")
    assert packages_env("uv", tmp_path) == {"uv": {"packages": ["numpy==2.4.6", "py-yaml==6.0.3"]}}
    (tmp_path / "requirements/constraints.txt").write_text("numpy>=2\n")
    with pytest.raises(ConfigError, match=r"'numpy>=2' is not a name==version pin"):
        packages_env("pip", tmp_path)


def test_a_job_carries_the_packages_and_params_refuse_another_installer(monkeypatch, tmp_path, memory_store):
    from pipelines.config import RayParams

    workspace = tmp_path / "ws"
    write_tree(workspace, {"in.txt": b"x"})
    fake = FakeJobs(tmp_path)
    request = replace(request_for(tmp_path, {"copy": {"upper": True}}), packages={"uv": {"packages": ["numpy==2.4.6"]}})
    client_run(monkeypatch, fake, workspace, request)
    runtime_env = fake.submitted[0]["runtime_env"]
    assert runtime_env["uv"] == {"packages": ["numpy==2.4.6"]} and runtime_env["working_dir"] == str(workspace)
    assert RayParams(runtime_env="pip").runtime_env == "pip" and RayParams().runtime_env is None
    with pytest.raises(ValueError, match="runtime_env"):
        RayParams(runtime_env="conda")


# --- a stage as a KubeRay RayJob -------------------------------------------------------------


def test_a_rayjob_runs_the_stage_job_mode_would_and_job_mode_then_takes_its_outputs(monkeypatch, tmp_path, memory_store):
    """``mixpipe rayjob``'s manifest, run as the operator would (its entrypoint in the unpacked code
    zip), publishes the outputs under job mode's own job id: running the stage in job mode
    afterwards submits nothing and takes them."""
    import subprocess
    import zipfile

    import yaml

    from pipelines.cluster.rayjob import TEMPLATE, code_files, rayjob_manifest
    from tests.pipelines.test_cluster_definitions import SCHEMAS, kuberay_rayjob_rules
    from tests.pipelines.test_cluster_definitions import _validate as validate_manifest

    repo = Path(__file__).resolve().parents[2]
    workspace = tmp_path / "ws"
    write_tree(workspace, {"in.txt": b"mixed samples", "params.yaml": b"copy: {upper: true}\n", "tool.py": b"# code\n",
                           ".gitignore": b"/in.txt\n/data/\n", "data/big.bin": b"0" * 64, "notes/new.py": b"# untracked\n"})
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    subprocess.run(["git", "-C", str(workspace), "add", "params.yaml", "tool.py", ".gitignore"], check=True)
    # tracked and untracked-but-not-ignored files are code; ignored ones (data, DVC outputs) are not
    assert code_files(workspace) == [".gitignore", "notes/new.py", "params.yaml", "tool.py"]

    request = replace(request_for(tmp_path, {"copy": {"upper": True}}), packages={"pip": {"packages": ["numpy==2.4.6"]}})
    template = yaml.safe_load((repo / TEMPLATE).read_text())
    manifest = rayjob_manifest(request, workspace, template, cluster="lab", ttl_s=600)
    again = rayjob_manifest(request, workspace, template, cluster="lab", ttl_s=600)
    assert manifest == again  # same inputs, params, code and store: the same job, the same code zip
    kuberay_rayjob_rules(manifest)
    if SCHEMAS.is_dir():
        validate_manifest(manifest, "RayJob")
    spec = manifest["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "lab"} and spec["ttlSecondsAfterFinished"] == 600
    assert manifest["metadata"]["name"] == spec["jobId"] and spec["jobId"].startswith("mixpipe-copy-")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["pip"] == {"packages": ["numpy==2.4.6"]} and runtime_env["working_dir"].endswith(".zip")
    assert spec["metadata"]["mixpipe_stage"] == "copy"

    # the operator's part: Ray unpacks the zip (one top-level folder) and runs the entrypoint there
    fs = fsspec.filesystem("memory")
    with zipfile.ZipFile(io.BytesIO(fs.cat(runtime_env["working_dir"].removeprefix("memory://")))) as archive:
        names = archive.namelist()
        assert {name.split("/", 1)[0] for name in names} == {"mixpipe"} and "mixpipe/data/big.bin" not in names
        archive.extractall(tmp_path / "unpacked")
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.cluster.remote_stage"]
    remote = RemoteStage.from_json(argv[3])
    assert remote.job_id == spec["jobId"]
    (tmp_path / "job").mkdir()
    assert run_remote(remote, tmp_path / "unpacked" / "mixpipe", tmp_path / "job") == 0

    fake = FakeJobs(tmp_path, existing={spec["jobId"]: "SUCCEEDED"})  # the Ray job the operator submitted
    report, _ = client_run(monkeypatch, fake, workspace, request)
    assert (report.action, report.job_id) == ("take", spec["jobId"]) and fake.submitted == []
    assert (workspace / "out/o.txt").read_text() == "MIXED SAMPLES"


def test_rayjob_names_are_dns_labels_that_keep_the_ids_hash():
    from pipelines.cluster.rayjob import rayjob_name

    assert rayjob_name("mixpipe-augment-manifold_mixup-0123456789abcdef") == "mixpipe-augment-manifold-mixup-0123456789abcdef"
    long = rayjob_name("mixpipe-augment-a_very_long_mixing_method_name-0123456789abcdef")
    assert len(long) <= 47 and long.endswith("-0123456789abcdef") and long.startswith("mixpipe-augment-a-very")
    assert rayjob_name("mixpipe-train-0123456789abcdef") == "mixpipe-train-0123456789abcdef"
