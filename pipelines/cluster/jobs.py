"""Ray jobs through the Jobs API (the dashboard address, ``http://<head>:8265``).

A job is named by a submission id chosen here, so that whoever runs the same thing again finds
it: the first attempt is the id itself, a resubmission after a failure ``<id>-a2``, ``<id>-a3``...
:func:`decide` says what to do with what the cluster already has under an id: follow a job that
is pending or running, take the outputs of one that succeeded, submit a new attempt after one
that failed or was stopped.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from pipelines.cluster.auth import TOKEN_ENV, TOKEN_PATH_ENV, ensure_private_token, ensure_token_auth
from pipelines.cluster.session import ADDRESS_ENV, DEFAULT_CONNECT_TIMEOUT_S, WORKING_DIR_EXCLUDES, scoped_env
from pipelines.errors import ClusterError
from pipelines.urls import redact

ACTIVE = frozenset({"PENDING", "RUNNING"})
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def submission_id(stage: str, fingerprint: str) -> str:
    """A job id derived from a stage and the hash of what defines its result."""
    return f"mixpipe-{re.sub(r'[^A-Za-z0-9_-]', '-', stage)}-{fingerprint}"


def attempt_id(base: str, attempt: int) -> str:
    return base if attempt == 1 else f"{base}-a{attempt}"


@dataclass(frozen=True)
class Decision:
    """``attach`` to a pending/running job, ``take`` a succeeded one's outputs, or ``submit`` a new
    attempt; ``job_id`` is that job, ``previous`` the failed attempt a submission replaces."""

    action: Literal["attach", "take", "submit"]
    job_id: str
    previous: str | None = None
    previous_status: str | None = None


def decide(base: str, jobs: Mapping[str, str]) -> Decision:
    """What to do about ``base`` given the cluster's jobs (submission id -> status)."""
    attempts = {}
    for job_id, status in jobs.items():
        if job_id == base:
            attempts[1] = status
        elif job_id.startswith(f"{base}-a") and job_id[len(base) + 2:].isdigit():
            attempts[int(job_id[len(base) + 2:])] = status
    if not attempts:
        return Decision("submit", attempt_id(base, 1))
    last = max(attempts)
    status = str(attempts[last]).upper()
    if status in ACTIVE:
        return Decision("attach", attempt_id(base, last))
    if status == "SUCCEEDED":
        return Decision("take", attempt_id(base, last))
    return Decision("submit", attempt_id(base, last + 1), attempt_id(base, last), status)


def probe_dashboard(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` unless an HTTP server answers at ``address`` (Ray's own client
    sets no timeout: a silent address would hang it)."""
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # something answered; the client reports what (e.g. a refused token)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ClusterError(f"no Ray dashboard answered at {redact(address)} within {timeout_s:g}s: {reason}") from None


def jobs_client(address: str, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S):
    """A ``JobSubmissionClient`` for the dashboard at ``address``, with token auth.

    Raises:
        ClusterError: nothing answers there in time, or the cluster refuses the token.
    """
    ensure_token_auth(joining=True)
    ensure_private_token(create=False)
    probe_dashboard(address, connect_timeout_s)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with scoped_env(**{ADDRESS_ENV: None}):  # Ray's client would prefer RAY_ADDRESS to its argument
            return JobSubmissionClient(address)
    except AuthenticationError:
        raise ClusterError(
            f"the Ray cluster at {redact(address)} refused this client's token: give it the cluster's token in "
            f"{TOKEN_ENV} or a file named by {TOKEN_PATH_ENV} (default ~/.ray/auth_token)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"could not use the Ray jobs API at {redact(address)}: {redact(str(error))}") from None


def job_statuses(client) -> dict[str, str]:
    """Every job the cluster knows that has a submission id, with its status."""
    return {job.submission_id: str(job.status.value if hasattr(job.status, "value") else job.status)
            for job in client.list_jobs() if job.submission_id}


class PrefixedWriter:
    """Writes text to ``stream`` with ``prefix`` before every line (chunks may split lines)."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.pending:
            self.stream.write(f"{self.prefix}{self.pending}\n")
            self.pending = ""
        self.stream.flush()


def follow(client, job_id: str, stream: TextIO | None = None, prefix: str = "") -> str:
    """Copy the job's logs to ``stream`` until it ends; return its final status."""
    writer = PrefixedWriter(stream or sys.stdout, prefix)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            writer.write(redact(lines))

    try:
        asyncio.run(tail())
    finally:
        writer.close()
    status = job_status(client, job_id)
    while status not in TERMINAL:  # the log stream can close a moment before the status settles
        time.sleep(0.5)
        status = job_status(client, job_id)
    return status


def job_status(client, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return str(status.value if hasattr(status, "value") else status)


def submit(
    client,
    job_id: str,
    entrypoint: str,
    working_dir: str,
    env_vars: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    num_gpus: float = 0,
    entrypoint_resources: Mapping[str, float] | None = None,
    packages: Mapping[str, Any] | None = None,
) -> str:
    """Submit ``entrypoint`` with ``working_dir`` as its code (and ``packages``, a runtime env's
    ``pip``/``uv`` entry, installed at its start); return its id.

    Raises:
        ClusterError: the cluster refused the submission.
    """
    runtime_env: dict[str, Any] = {"working_dir": working_dir, "excludes": WORKING_DIR_EXCLUDES, **(packages or {})}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    try:
        return client.submit_job(
            entrypoint=entrypoint,
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata=dict(metadata or {}),
            entrypoint_num_gpus=num_gpus or None,
            entrypoint_resources=dict(entrypoint_resources) if entrypoint_resources else None,
        )
    except RuntimeError as error:
        if job_id and "already exists" in str(error):
            return job_id  # submitted meanwhile by another client of the same stage (a queued twin): follow it
        raise ClusterError(f"job submission refused: {redact(str(error))}") from None


def forwarded_env(names: list[str]) -> dict[str, str]:
    """The values of the variables ``names`` here (set ones only), to forward to a job by name.

    Raises:
        ClusterError: a name looks like a credential (a job's runtime env is visible on its dashboard).
    """
    from pipelines.urls import looks_secret

    for name in names:
        if looks_secret(name):
            raise ClusterError(f"{name}: will not forward a credential to a job (anyone who can see the dashboard "
                               "sees a job's environment); the nodes need their own")
    return {name: os.environ[name] for name in names if name in os.environ}


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
    log_stream: TextIO | None = None,
    env_vars: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
    num_gpus: float = 0,
    entrypoint_resources: Mapping[str, float] | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    packages: Mapping[str, Any] | None = None,
) -> JobOutcome:
    """Run ``entrypoint`` as a Ray job (``mixpipe submit``) and optionally follow its logs.

    With ``job_id``, a pending or running job of that id is followed rather than submitted again,
    and one that failed or was stopped gets a new attempt (:func:`decide`); one that succeeded is
    reported as it is.

    Args:
        address: the dashboard URL ``http://host:8265``; ``RAY_ADDRESS`` when None (a given address wins).

    Raises:
        ClusterError: no address, the cluster is unreachable or refuses us, or the submission is refused.
    """
    resolved = address or os.environ.get(ADDRESS_ENV)
    if not resolved:
        raise ClusterError(f"no cluster to submit to: set {ADDRESS_ENV} or pass --address")
    if "://" not in resolved or resolved.split("://", 1)[0].lower() not in ("http", "https"):
        raise ClusterError(f"{redact(resolved)}: jobs go to the dashboard address http://<head>:8265")
    client = jobs_client(resolved, connect_timeout_s)
    started = time.monotonic()
    decision = decide(job_id, job_statuses(client)) if job_id else Decision("submit", "")
    if decision.action == "submit":
        if decision.previous:
            print(f"mixpipe submit: {decision.previous} {decision.previous_status}; submitting {decision.job_id}",
                  file=sys.stderr)
        submitted = submit(client, decision.job_id or None, entrypoint, working_dir, env_vars, metadata, num_gpus,
                           entrypoint_resources, packages)
    else:
        submitted = decision.job_id
    if not wait:
        return JobOutcome(submitted, job_status(client, submitted), time.monotonic() - started)
    status = follow(client, submitted, log_stream)
    return JobOutcome(submitted, status, time.monotonic() - started)


def metadata_pairs(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; a value that looks like a credential is refused."""
    from pipelines.urls import looks_secret, secret_parts

    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClusterError(f"--metadata {pair!r}: expected KEY=VALUE")
        if looks_secret(key) or secret_parts(value):
            raise ClusterError(f"--metadata {key}: job metadata is public on the dashboard; no credentials")
        found[key] = value
    return found

