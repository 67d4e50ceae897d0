"""Running one stage's entry point on a params file of the test's, and reading its one-line error."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_in_process(monkeypatch, capsys, cwd: Path, params: dict, stage: str, *args: str) -> tuple[int, str]:
    """Run ``stages.<stage>`` in this process (no interpreter start: cheap for stages that fail
    before Ray); returns the exit code and stderr."""
    import importlib
    import signal

    path = cwd / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MIXPIPE_PARAMS", str(path))
    monkeypatch.delenv("MIXPIPE_VERBOSE", raising=False)
    monkeypatch.setattr(sys, "argv", [stage, *args])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}  # the entrypoint installs its own
    capsys.readouterr()
    try:
        importlib.import_module(f"stages.{stage}").main()
        code = 0
    except SystemExit as exited:
        code = exited.code
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return code, capsys.readouterr().err


def one_line(code: int, stderr: str, stage: str) -> str:
    """The single line of a stage that exited 2, without its ``mixpipe <stage>: error: `` prefix."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, f"exit {code}\n{stderr[-3000:]}"
    prefix = f"mixpipe {stage}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)
