"""A stage as a KubeRay ``RayJob`` (``mixpipe rayjob STAGE``): job mode's job, submitted by the
operator instead of by this machine.

Everything job mode sends travels through ``storage.shared_uri`` here too: the stage's inputs as
content-addressed blobs and their manifest, and this checkout's code as one zip (a single
top-level folder, as Ray's remote ``working_dir`` wants), named by its content. The manifest's
``jobId`` is the submission id job mode computes for the same stage, inputs, params, code and
store, so a later ``dvc repro`` in job mode finds the finished job and takes its outputs instead
of running it again.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import shlex
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import yaml

from pipelines import storage
from pipelines.cluster import jobs
from pipelines.cluster.job_mode import EXPERIMENT_ENV, JobRequest, check_store, git_revision, stage_inputs
from pipelines.cluster.remote_stage import RemoteStage
from pipelines.cluster.session import WORKING_DIR_EXCLUDES, worker_env
from pipelines.errors import ConfigError

TEMPLATE = Path("cluster") / "kuberay" / "rayjob.yaml"
CODE = "code"
TOP_FOLDER = "mixpipe"
# KubeRay's bound on a RayJob name (a RayCluster name less the 6 characters it appends) and DNS-1035
MAX_NAME = 47
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the archive's bytes depend on contents only


def code_files(root: Path) -> list[str]:
    """The checkout's files a job runs with: git's tracked and untracked-but-not-ignored files, less
    job mode's ``working_dir`` excludes (data travels as staged inputs, not as code)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True, timeout=60).stdout.decode()
    except (OSError, subprocess.SubprocessError) as error:
        raise ConfigError(f"{root}: mixpipe rayjob packs the code of a git checkout ({error})") from None
    prefixes = tuple(e.strip("/") + "/" for e in WORKING_DIR_EXCLUDES if e.startswith("/"))
    names = sorted({n for n in listed.split("\0") if n and (root / n).is_file()})
    return [n for n in names if not n.startswith(prefixes) and "__pycache__/" not in n]


def code_archive(root: Path, files: list[str]) -> bytes:
    """``files`` of ``root`` as a zip with one top-level folder, byte for byte the same for the same files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            info = zipfile.ZipInfo(f"{TOP_FOLDER}/{name}", _FIXED_TIME)
            info.external_attr = ((root / name).stat().st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / name).read_bytes())
    return buffer.getvalue()


def upload_code(root: Path, files: list[str], store: str) -> str:
    """Upload the code zip to ``<store>/code/<sha256>.zip`` unless it is there; its URL."""
    data = code_archive(root, files)
    url = storage.join(store, CODE, f"{hashlib.sha256(data).hexdigest()}.zip")
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        storage.write_bytes(url, data)
    return url


def rayjob_name(job_id: str) -> str:
    """A DNS-1035 name of at most 47 characters for the job: lower case, ``-`` for anything else,
    the id's hash tail kept when it must be cut."""
    name = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    if len(name) > MAX_NAME:
        head, _, tail = name.rpartition("-")
        name = f"{head[: MAX_NAME - len(tail) - 1].rstrip('-')}-{tail}"
    return name


def rayjob_manifest(request: JobRequest, root: Path, template: dict[str, Any], cluster: str | None = None,
                    ttl_s: int | None = None) -> dict[str, Any]:
    """Stage ``request``'s inputs and code in its store; the RayJob that runs it.

    Args:
        template: ``cluster/kuberay/rayjob.yaml``, parsed; its fields stay unless named here.
        cluster: the RayCluster to run on (default: the template's ``ray.io/cluster``).
        ttl_s: seconds the RayJob object stays after the job ends (default: the template's).

    Raises:
        ConfigError: no usable store, or the checkout is not a git one.
        ClusterError: the store is unreachable.
    """
    check_store(request.store)
    manifest, inputs_url, _ = stage_inputs(root, request.io.inputs, request.store)
    job_id = jobs.submission_id(request.io.name, request.fingerprint(manifest.digest))
    spec = RemoteStage(request.io.name, job_id, request.store, inputs_url, request.io.outputs,
                       tuple(shlex.split(request.io.cmd)))
    env_vars = {**jobs.forwarded_env(list(request.forward_env)), **worker_env()}
    files = code_files(root)
    chosen = os.environ.get("MIXPIPE_PARAMS")
    if chosen:
        if chosen not in files:
            raise ConfigError(f"MIXPIPE_PARAMS {chosen}: a RayJob reads its params from the code it ships, so name a "
                              "file of this checkout by its path relative to it (not ignored by git)")
        env_vars["MIXPIPE_PARAMS"] = chosen
    runtime_env = {"working_dir": upload_code(root, files, request.store), **request.packages, "env_vars": env_vars}

    document = copy.deepcopy(template)
    document["metadata"]["name"] = rayjob_name(job_id)
    job = document["spec"]
    job["entrypoint"] = shlex.join(["python", "-m", "pipelines.cluster.remote_stage", spec.to_json()])
    job["jobId"] = job_id
    job["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
    job["metadata"] = {"mixpipe_stage": request.io.name, "mixpipe_inputs": manifest.digest,
                       "dvc_experiment": os.environ.get(EXPERIMENT_ENV, ""), "git_revision": git_revision(root)}
    if cluster:
        job["clusterSelector"] = {"ray.io/cluster": cluster}
    if ttl_s is not None:
        job["ttlSecondsAfterFinished"] = ttl_s
    if request.num_gpus:
        job["entrypointNumGpus"] = request.num_gpus
    return document
