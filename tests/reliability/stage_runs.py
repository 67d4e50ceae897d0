"""Running one stage as DVC would, on a params file of the test's, and reading its one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_stage(cwd: Path, params: dict, stage: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m stages.<stage>`` in ``cwd`` with ``params`` as its params.yaml."""
    path = cwd / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MIXPIPE_PARAMS": str(path), "PYTHONPATH": str(REPO), **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess, stage: str) -> str:
    """The single stderr line of a stage that exited 2, without its ``mixpipe <stage>: error: `` prefix."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1, result.stderr[-3000:]
    prefix = f"mixpipe {stage}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)
