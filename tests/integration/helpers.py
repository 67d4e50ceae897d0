"""Shared helpers for integration tests: tiny data, workspace copies of the repo, subprocess runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A pipeline small enough for CI that still exercises every stage for real.
TINY_PARAMS = {
    # digits, the smallest bundled set, keeps CI quick; the default (MNIST-1D) DAG is `make repro`'s
    "data": {"name": "digits", "val_fraction": 0.15, "test_fraction": 0.15},
    # train reads augment's shards: the offline path end to end (tune mixes online)
    "mixing": {"source": "shards"},
    "augment": {"methods": ["mixup"], "num_shards": 2},
    "train": {"model": "cnn", "epochs": 2, "batch_size": 32, "num_workers": 2},
    # one rung: rungs and their continuation are the library tests' (test_ray_library, test_cluster)
    "tune": {"methods": ["mixup", "cutmix"], "alphas": [0.2, 1.0], "epochs": 1, "grace_period": 1,
             "max_concurrent_trials": 2},
    # one method of each kind of input the stage supplies (scores, Fishers, Grams, unlabelled inputs
    # and the architecture, SLERP's two best), not every default one
    "merge": {"methods": ["uniform_soup", "greedy_soup", "task_arithmetic", "ties", "model_stock", "slerp", "fisher",
                          "regmean", "adamerging", "pleas"],
              "search": {"task_arithmetic": {"scale": [0.5]}, "ties": {"density": [0.2, 0.5], "scale": [1.0]}}},
}


def merge_dicts(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# Results of earlier runs in this checkout: the workspace makes its own.
OUTPUTS = ("data/", "models/", "results/", "report/", "dvclive/", "metrics.json", "dvc.lock")


def make_workspace(target: Path, overrides: dict) -> Path:
    """A git-committed copy of this checkout's code and config (tracked and untracked-but-not-ignored
    files, minus earlier results), with ``overrides`` merged into params.yaml."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if name.startswith(OUTPUTS):
            continue
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (target / "params.yaml").write_text(yaml.safe_dump(merge_dicts(params, overrides), sort_keys=False))
    git(target, "init", "-q")
    git(target, "add", "-A")
    git(target, "commit", "-qm", "workspace")
    return target


def git(cwd: Path, *args: str) -> str:
    identity = ["-c", "user.name=mixpipe-tests", "-c", "user.email=tests@mixpipe.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def environment(env: dict | None = None) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}


def check_finished(command: tuple[str, ...], result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def run(
    cwd: Path, *command: str, env: dict | None = None, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command with the venv first on PATH; with ``check``, fail with its output if it fails."""
    result = subprocess.run(command, cwd=cwd, env=environment(env), capture_output=True, text=True, timeout=timeout)
    return check_finished(command, result) if check else result


def start(cwd: Path, *command: str, env: dict | None = None) -> subprocess.Popen:
    """Start a command (venv first on PATH) in the background, its output going to temporary files
    (a pipe nobody reads while waiting on something else would stall it)."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, cwd=cwd, env=environment(env), stdout=out, stderr=err, text=True)
    process.outputs = (out, err)
    return process


def finish(process: subprocess.Popen, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a :func:`start` ed command; with ``check``, fail with its output if it failed."""
    process.wait(timeout=timeout)
    texts = []
    for handle in process.outputs:
        handle.seek(0)
        texts.append(handle.read())
        handle.close()
    result = subprocess.CompletedProcess(process.args, process.returncode, *texts)
    return check_finished(tuple(process.args), result) if check else result


def running(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (zombies do not)."""
    from pipelines.lifetime import process_stat

    return [pid for pid in pids if (stat := process_stat(pid)) is not None and stat.running]


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def kill_all(pids: list[int]) -> None:
    """SIGKILL exactly these processes (ours: recorded as descendants of a process we started)."""
    for pid in running(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
