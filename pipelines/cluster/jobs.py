"""Ray jobs through the Jobs API (the dashboard address, ``http://<head>:8265``)."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass

from pipelines.cluster.auth import ensure_private_token, ensure_token_auth
from pipelines.cluster.session import ADDRESS_ENV, WORKING_DIR_EXCLUDES, scoped_env
from pipelines.errors import ClusterError
from pipelines.urls import redact


def submission_id(stage: str, fingerprint: str) -> str:
    """A job id derived from a stage and its params hash: a re-submission finds the same job."""
    return f"mixpipe-{re.sub(r'[^A-Za-z0-9_-]', '-', stage)}-{fingerprint}"


@dataclass(frozen=True)
class JobOutcome:
    submission_id: str
    status: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def submit_job(
    entrypoint: str,
    address: str | None,
    working_dir: str,
    job_id: str | None = None,
    wait: bool = True,
    log_stream=None,
    env_vars: dict[str, str] | None = None,
    entrypoint_resources: dict[str, float] | None = None,
) -> JobOutcome:
    """Submit ``entrypoint`` as a Ray job with ``working_dir`` as its code; optionally stream its logs.

    Args:
        entrypoint: the shell command the job runs on the cluster.
        address: the cluster (dashboard ``http://host:8265`` or GCS address); ``RAY_ADDRESS`` if None.
        working_dir: local directory uploaded as the job's code (minus :data:`WORKING_DIR_EXCLUDES`).
        job_id: the submission id; a job with this id that already exists is followed, not resubmitted.
        wait: block until the job ends.
        log_stream: where to copy the job's logs while waiting (default: stdout).
        env_vars: extra environment for the job.
        entrypoint_resources: custom resources the entrypoint reserves (e.g. a one-slot lock).

    Raises:
        ClusterError: no address, the cluster is unreachable, or the submission is refused.
    """
    resolved = address or os.environ.get(ADDRESS_ENV)  # an explicit --address wins
    if not resolved:
        raise ClusterError(f"no cluster to submit to: set {ADDRESS_ENV} or pass --address")
    ensure_token_auth(joining=True)
    ensure_private_token(create=False)
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        with scoped_env(**{ADDRESS_ENV: None}):  # Ray's client would prefer RAY_ADDRESS to its argument
            client = JobSubmissionClient(resolved)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"could not reach the Ray jobs API at {redact(resolved)}: {error}") from None

    started = time.monotonic()
    known = {job.submission_id for job in client.list_jobs()} if job_id else set()
    if job_id not in known:
        runtime_env = {"working_dir": working_dir, "excludes": WORKING_DIR_EXCLUDES}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                entrypoint_resources=entrypoint_resources,
            )
        except RuntimeError as error:
            raise ClusterError(f"job submission refused: {redact(str(error))}") from None
    if not wait:
        return JobOutcome(job_id, str(client.get_job_status(job_id)), time.monotonic() - started)

    stream = log_stream or sys.stdout
    import asyncio

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            stream.write(lines)
            stream.flush()

    asyncio.run(follow())
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal:  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return JobOutcome(job_id, str(status), time.monotonic() - started)
