"""What every stage shares: params loading, the one-line error exit, where Ray keeps run state."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from pipelines import storage
from pipelines.cluster import RayConnection, ray_session
from pipelines.cluster.job_mode import JobRequest, check_store, require_store, run_stage_as_job
from pipelines.cluster.runtime_env import packages_env
from pipelines.cluster.session import jobs_address
from pipelines.cluster.stage_io import StageIO, find_stage
from pipelines.config import Params
from pipelines.console import configure_console
from pipelines.errors import MixpipeError
from pipelines.lifetime import exit_on_signals, watch_parent
from pipelines.urls import redact
from pipelines.validation import load_checked
from pipelines.vector_math import warm_vector_math

PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
# Where the stages and pipelines packages are: the repo root, or a Ray job's working directory.
CODE_ROOT = Path(__file__).resolve().parents[1]
DVC_STAGE_ENV = "DVC_STAGE"  # DVC sets it for every stage command it runs


def entrypoint(
    stage: str, uses_ray: bool | Callable[[Params], bool] = False
) -> Callable[[Callable[[list[str]], None]], Callable[[], None]]:
    """Wrap a stage's ``main(argv)``.

    - A stage that computes with torch first resolves oneMKL's vector-math dispatch on one thread
      (:mod:`pipelines.vector_math`), so its first parallel ``exp`` or ``log`` is like every other.
    - A stage that ``uses_ray`` (always, or when its params say so) runs as a Ray job when the
      address is a Jobs API URL (job mode, :mod:`pipelines.cluster.job_mode`); else ``main`` runs here.
    - A :class:`MixpipeError`, or an ``OSError`` that names its file (a path in params.yaml that
      cannot be read), becomes one line on stderr and exit 2; any other error prints its traceback
      and exits 1. ``--verbose`` (or ``MIXPIPE_VERBOSE=1``, for a stage DVC runs) prints the
      traceback of any error. Every line, and every log record, has URL credentials redacted.
    - SIGTERM/SIGHUP unwind the stage (a local Ray instance is stopped on the way out), and under
      DVC (``DVC_STAGE`` set) the stage stops when the DVC process that started it is gone.
      Ctrl-C exits 130 without a traceback.
    """

    def wrap(main: Callable[[list[str]], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            redact_log_records()
            exit_on_signals()
            if os.environ.get(DVC_STAGE_ENV):
                watch_parent(f"mixpipe {stage}")
            argv = [a for a in sys.argv[1:] if a != VERBOSE_FLAG]
            verbose = len(argv) < len(sys.argv) - 1 or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
            try:
                configure_console(verbose)
                if "torch" in sys.modules:  # the stage computes with torch: no new import for the others
                    warm_vector_math()
                if uses_ray and _run_as_job(stage, argv, uses_ray):
                    return
                main(argv)
            except KeyboardInterrupt:
                sys.exit(130)
            except (MixpipeError, OSError) as error:
                named = isinstance(error, MixpipeError) or getattr(error, "filename", None) is not None
                if verbose or not named:
                    print(redact(traceback.format_exc()), file=sys.stderr, end="")
                if not named:
                    sys.exit(1)
                print(redact(f"mixpipe {stage}: error: {_one_line(error)}"), file=sys.stderr)
                sys.exit(2)
            except Exception:
                print(redact(traceback.format_exc()), file=sys.stderr, end="")
                sys.exit(1)

        return run

    return wrap


VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "MIXPIPE_VERBOSE"


def _one_line(error: BaseException) -> str:
    """The error as one line: an OSError as ``<file>: <reason>``, any message's first line."""
    if isinstance(error, OSError) and not isinstance(error, MixpipeError):
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error)
    first, *rest = text.strip().splitlines() or [type(error).__name__]
    return first + (f" (full message: {VERBOSE_FLAG} or {VERBOSE_ENV}=1)" if rest else "")


def _run_as_job(stage: str, argv: list[str], uses_ray: bool | Callable[[Params], bool]) -> bool:
    """Run the stage as a Ray job if the address asks for job mode and the stage uses Ray; whether it did."""
    p = params()
    address = jobs_address(p.ray.address)
    if address is None or (callable(uses_ray) and not uses_ray(p)):
        return False
    io = find_stage(DVC_FILE, p.model_dump(mode="json"), ["python", "-m", f"stages.{stage}", *argv],
                    os.environ.get(DVC_STAGE_ENV))
    run_stage_as_job(job_request(p, io, f"job mode (ray.address / RAY_ADDRESS {redact(address)})"), address)
    return True


def job_request(p: Params, io: StageIO, via: str) -> JobRequest:
    """The stage ``io`` as a Ray job (job mode's, or a RayJob's: ``via`` says which, for messages)."""
    return JobRequest(io, p.model_dump(mode="json"), code_version(), require_store(p.storage.shared_uri, via),
                      tuple(p.ray.forward_env), connect_timeout_s=p.ray.connect_timeout_s,
                      packages=packages_env(p.ray.runtime_env, Path(code_dir())))


def redact_log_records() -> None:
    """Redact URL credentials in every log record this process creates, whichever logger."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "mixpipe_redacts", False):
        return

    def redacting(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it when it is emitted
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    redacting.mixpipe_redacts = True
    logging.setLogRecordFactory(redacting)


def params(*sections: str) -> Params:
    """The whole params.yaml, validated (types and ranges of every section; the registry names of
    ``sections``, the ones this stage reads); the shared store's options take effect for this
    process and the Ray workers it starts."""
    p = load_checked(os.environ.get("MIXPIPE_PARAMS", PARAMS_FILE), sections)
    storage.configure(p.storage.options, storage.protocol_of(p.storage.shared_uri) if p.storage.shared_uri else None)
    return p


def run_state_uri(params: Params) -> str:
    """Where Ray Train and Tune keep run state: ``storage.shared_uri`` if set, else a local dir."""
    if params.storage.shared_uri:
        if not storage.is_local(params.storage.shared_uri):
            check_store(params.storage.shared_uri)  # one line now, not Ray's traceback once a run writes there
        return storage.join(params.storage.shared_uri, "ray")
    return str(Path(params.paths.run_state).resolve())


def code_version(roots: tuple[str, ...] = ("pipelines", "stages"), base: Path | None = None) -> str:
    """A hash of every Python source under ``roots`` (paths and contents).

    Part of each Ray run name: a run with the same name *resumes*, so without the code in the
    name, a stage that DVC re-runs after a code change would get the old code's finished run back.
    """
    base = base or CODE_ROOT
    digest = hashlib.sha256()
    for path in sorted(p for root in roots for p in (base / root).rglob("*.py")):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_dir() -> str:
    """The checkout whose code a cluster's workers import (stages run from the repo root)."""
    return str(Path.cwd())


def stage_ray(params: Params) -> contextlib.AbstractContextManager[RayConnection]:
    """The stage's Ray session, as ``ray:`` in params asks (this checkout's code for a cluster's workers)."""
    ray = params.ray
    return ray_session(ray.address, ray.num_cpus, working_dir=code_dir(), connect_timeout_s=ray.connect_timeout_s,
                       packages=packages_env(ray.runtime_env, Path(code_dir())))


def target_scale(prepared_dir: str, task: str) -> float:
    """The regression targets' train std from prepare's ``stats.json`` (1 for classification), so
    errors are reported in the target's own units."""
    if task != "regression":
        return 1.0
    return float(storage.read_json(storage.join(prepared_dir, "stats.json"))["target_std"])
