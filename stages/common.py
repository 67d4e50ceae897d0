"""What every stage shares: params loading, the one-line error exit, where Ray keeps run state."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines import storage
from pipelines.config import Params, load_params
from pipelines.errors import MixpipeError

PARAMS_FILE = "params.yaml"


def entrypoint(stage: str) -> Callable[[Callable[[list[str]], None]], Callable[[], None]]:
    """Wrap a stage's ``main(argv)``: a :class:`MixpipeError` becomes one line on stderr and exit 2."""

    def wrap(main: Callable[[list[str]], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            try:
                main(sys.argv[1:])
            except MixpipeError as error:
                print(f"mixpipe {stage}: error: {error}", file=sys.stderr)
                sys.exit(2)

        return run

    return wrap


def params() -> Params:
    """The whole params.yaml, validated (every stage validates everything before working)."""
    return load_params(os.environ.get("MIXPIPE_PARAMS", PARAMS_FILE))


def run_state_uri(params: Params) -> str:
    """Where Ray Train and Tune keep run state: ``storage.shared_uri`` if set, else a local dir."""
    if params.storage.shared_uri:
        return storage.join(params.storage.shared_uri, "ray")
    return str(Path(params.paths.run_state).resolve())


def code_version(roots: tuple[str, ...] = ("pipelines", "stages"), base: Path | None = None) -> str:
    """A hash of every Python source under ``roots`` (paths and contents).

    Part of each Ray run name: a run with the same name *resumes*, so without the code in the
    name, a stage that DVC re-runs after a code change would get the old code's finished run back.
    """
    base = base or Path.cwd()
    digest = hashlib.sha256()
    for path in sorted(p for root in roots for p in (base / root).rglob("*.py")):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_dir() -> str:
    """The checkout whose code a cluster's workers import (stages run from the repo root)."""
    return str(Path.cwd())


def target_scale(prepared_dir: str, task: str) -> float:
    """The regression targets' train std from prepare's ``stats.json`` (1 for classification), so
    errors are reported in the target's own units."""
    if task != "regression":
        return 1.0
    return float(storage.read_json(storage.join(prepared_dir, "stats.json"))["target_std"])
