"""Job mode: a stage that uses Ray runs as a Ray job on a remote cluster; the stage process is a
thin client that needs only the cluster's dashboard (HTTP) and the shared object store.

1. The stage's data inputs (its ``dvc.yaml`` deps that are not code) go to ``storage.shared_uri``
   as content-addressed blobs (:mod:`pipelines.cluster.staging`); what is there is not sent again.
2. The job's submission id is derived from the stage, the inputs' digest, the stage's params, the
   code and the store, so running the same stage again finds the same job. The job gets the code
   as ``working_dir``, metadata naming the stage, experiment and git revision, and in its
   environment only what is named: ``ray.forward_env`` and the store's (non-secret) options.
   Credentials stay where they are: the nodes need their own.
3. On the cluster, :mod:`pipelines.cluster.remote_stage` writes the inputs into the job's working
   directory, runs the stage there as a driver, and publishes its outputs to the store.
4. Here the job's logs are streamed, prefixed with the stage; when it succeeds its outputs replace
   the workspace's, each atomically, and the stage exits with the job's status.

A re-run (after Ctrl-C, a closed laptop, a killed ``dvc repro``) follows the job if it is still
pending or running, takes its outputs if it succeeded, and submits a new attempt if it failed or
was stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pipelines import storage
from pipelines.cluster import jobs, staging
from pipelines.cluster.remote_stage import RemoteStage, outputs_url
from pipelines.cluster.session import worker_env
from pipelines.cluster.stage_io import StageIO, params_subset
from pipelines.errors import ClusterError, ConfigError

STAGED = "staged"
EXPERIMENT_ENV = "DVC_EXP_NAME"


@dataclass(frozen=True)
class JobRequest:
    """A stage to run as a job.

    Attributes:
        io: the stage as ``dvc.yaml`` declares it.
        values: the whole params, as plain values.
        code: a hash of the code the job will run.
        store: ``storage.shared_uri``.
        forward_env: variables whose values the job gets (``ray.forward_env``).
        num_gpus: GPUs the job's driver needs.
        connect_timeout_s: how long the dashboard may take to answer.
        packages: a runtime env's ``pip``/``uv`` entry (``ray.runtime_env``); empty when the nodes
            have the dependencies.
    """

    io: StageIO
    values: dict[str, Any]
    code: str
    store: str
    forward_env: tuple[str, ...] = ()
    num_gpus: float = 0
    connect_timeout_s: float = 30.0
    packages: Mapping[str, Any] = field(default_factory=dict)

    def fingerprint(self, inputs_digest: str) -> str:
        defining = {"stage": self.io.name, "inputs": inputs_digest, "params": params_subset(self.values, self.io.params),
                    "code": self.code, "store": self.store}
        return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobReport:
    job_id: str
    action: str
    status: str
    uploaded_bytes: int
    uploaded_files: int
    downloaded_bytes: int
    seconds: float


def require_store(store: str | None, via: str) -> str:
    """``store``, checked: ``via`` (job mode at an address, a RayJob) needs an object store."""
    if not store:
        raise ConfigError(f"storage.shared_uri: {via} needs a store every "
                          "node and this machine reach, e.g. s3://bucket/mixpipe")
    if storage.is_local(store):
        raise ConfigError(f"storage.shared_uri {store}: job mode needs an object store (s3://, gs://) that this "
                          "machine and the cluster both reach, not a path")
    return store


def check_store(store: str) -> None:
    """Fail with one line when the store's bucket is missing or unreachable."""
    try:
        fs, path = storage.filesystem(store)
        bucket = path.split("/", 1)[0]
        fs.info(bucket)  # raises what went wrong; exists() would say False for an unreachable endpoint too
        exists = True
    except FileNotFoundError:
        exists = False
    except ImportError as error:
        raise ConfigError(f"storage.shared_uri {store}: {error}") from None
    except Exception as error:  # noqa: BLE001 - botocore's and gcsfs's errors share no base; each is one line here
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ClusterError(f"storage.shared_uri {store}: cannot reach the store ({type(error).__name__}: {first}); "
                           "check the endpoint (AWS_ENDPOINT_URL), the credentials and the network") from None
    if not exists:
        raise ConfigError(f"storage.shared_uri {store}: the bucket {bucket!r} does not exist (or these credentials "
                          "cannot see it)")


def stage_inputs(root: Path, inputs: tuple[str, ...], store: str) -> tuple[staging.Manifest, str, staging.Transfer]:
    """Upload the inputs' blobs and their manifest (``<store>/staged/<digest>.json``)."""
    manifest = staging.scan(root, inputs)
    sent = staging.upload(root, manifest, store)
    url = storage.join(store, STAGED, f"{manifest.digest}.json")
    if staging.read_manifest(url) is None:
        storage.write_text(url, manifest.to_json())
    return manifest, url, sent


def git_revision(root: Path) -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def _interrupted(client, job_id: str, stage: str, stream: TextIO) -> None:
    """Ctrl-C while following: ask whether to stop the job; without a terminal, leave it running."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            answer = input(f"\n{stage}: stop the job {job_id} on the cluster too? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            client.stop_job(job_id)
            print(f"{stage}: asked the cluster to stop {job_id}", file=stream, flush=True)
            return
    print(f"{stage}: the job {job_id} keeps running on the cluster; run the stage again to follow it and take "
          "its outputs", file=stream, flush=True)


def run_stage_as_job(request: JobRequest, address: str, root: Path | None = None,
                     stream: TextIO | None = None) -> JobReport:
    """Run ``request`` as a Ray job at the dashboard ``address`` and bring its outputs into ``root``.

    Raises:
        ConfigError: no usable store.
        ClusterError: the cluster or store is unreachable, or the job failed.
    """
    root = root or Path.cwd()
    stream = stream or sys.stdout
    started = time.monotonic()
    stage = request.io.name
    check_store(request.store)
    client = jobs.jobs_client(address, request.connect_timeout_s)
    manifest, inputs_url, sent = stage_inputs(root, request.io.inputs, request.store)
    base = jobs.submission_id(stage, request.fingerprint(manifest.digest))
    decision = jobs.decide(base, jobs.job_statuses(client))
    job_id = decision.job_id
    if decision.action == "take" and staging.read_manifest(outputs_url(request.store, job_id)) is None:
        decision = jobs.decide(base, {**jobs.job_statuses(client), job_id: "FAILED"})  # its outputs are gone
        job_id = decision.job_id

    if decision.action == "submit":
        spec = RemoteStage(stage, job_id, request.store, inputs_url, request.io.outputs,
                           tuple(shlex.split(request.io.cmd)))
        env_vars = {**jobs.forwarded_env(list(request.forward_env)), **worker_env()}
        if os.environ.get("MIXPIPE_PARAMS"):
            env_vars["MIXPIPE_PARAMS"] = os.environ["MIXPIPE_PARAMS"]
        metadata = {"mixpipe_stage": stage, "mixpipe_inputs": manifest.digest,
                    "dvc_experiment": os.environ.get(EXPERIMENT_ENV, ""), "git_revision": git_revision(root)}
        entrypoint = shlex.join(["python", "-m", "pipelines.cluster.remote_stage", spec.to_json()])
        if decision.previous:
            print(f"{stage}: job {decision.previous} {decision.previous_status}; submitting {job_id}", file=stream)
        jobs.submit(client, job_id, entrypoint, str(root), env_vars, metadata, request.num_gpus, packages=request.packages)
        print(f"{stage}: submitted job {job_id} to {address} (inputs: {sent.files} file(s), {sent.bytes} bytes "
              f"uploaded, {sent.skipped} already in the store)", file=stream, flush=True)
    elif decision.action == "attach":
        print(f"{stage}: following job {job_id}, already on the cluster", file=stream, flush=True)

    if decision.action == "take":
        status = "SUCCEEDED"
        print(f"{stage}: job {job_id} already succeeded; taking its outputs", file=stream, flush=True)
    else:
        try:
            status = jobs.follow(client, job_id, stream, prefix=f"[{stage}] ")
        except KeyboardInterrupt:
            _interrupted(client, job_id, stage, stream)
            raise
        except SystemExit:  # SIGHUP/SIGTERM: the process that ran us is gone; the job goes on
            print(f"{stage}: stopping; the job {job_id} keeps running on the cluster", file=stream, flush=True)
            raise
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        reason = (info.message or "").strip().splitlines()
        raise ClusterError(f"{stage}: job {job_id} {status}" + (f": {reason[-1]}" if reason else "") +
                           " (its log is above; run the stage again to submit a new attempt)")
    outputs = staging.read_manifest(outputs_url(request.store, job_id))
    if outputs is None:
        raise ClusterError(f"{stage}: job {job_id} succeeded but left no outputs at {outputs_url(request.store, job_id)}")
    received = staging.materialize(outputs, request.store, root)
    seconds = time.monotonic() - started
    print(f"{stage}: job {job_id} {status}; {received.files} output file(s), {received.bytes} bytes in the workspace "
          f"({seconds:.1f}s)", file=stream, flush=True)
    return JobReport(job_id, decision.action, status, sent.bytes, sent.files, received.bytes, seconds)

