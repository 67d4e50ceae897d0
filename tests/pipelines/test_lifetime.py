"""A stage stops when the process that started it (DVC) is gone, even with a shell in between."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from pipelines.lifetime import SHELLS, guardian, is_alive, process_stat

CHILD = textwrap.dedent("""
    import os, sys, time
    from pipelines.lifetime import exit_on_signals, watch_parent
    exit_on_signals()
    watch_parent("child", poll_s=0.1, grace_s=30)
    state = sys.argv[1]
    open(state + ".pid", "w").write(str(os.getpid()))
    try:
        time.sleep(600)
    finally:
        open(state + ".cleaned", "w").write("finally ran")
""")
# The guardian starts the child the way DVC does: through `sh -c`, which stays in between (dash).
GUARDIAN = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{sys.argv[1]}' {sys.argv[2]}"])
    time.sleep(600)
""")


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_this_process_identifies_itself_and_its_guardian():
    me = process_stat(os.getpid())
    assert me is not None and me.running and me.ppid == os.getppid()
    found = guardian()
    assert found is not None and found.name not in SHELLS and is_alive(found)
    assert process_stat(2**22 + 1) is None  # above the kernel's pid_max: no such process


def test_a_stage_stops_gracefully_when_its_guardian_is_killed(tmp_path, repo_root):
    state = str(tmp_path / "child")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    boss = subprocess.Popen([sys.executable, "-c", GUARDIAN, CHILD.replace("'", '"'), state], env=env)
    try:
        assert wait_for(lambda: os.path.exists(state + ".pid"), 60), "the child did not start"
        child = int(open(state + ".pid").read())
        watched = guardian(process_stat(child).ppid)
        assert watched.pid == boss.pid  # the shell in between is skipped
        boss.send_signal(signal.SIGKILL)
        boss.wait()
        started = time.monotonic()
        gone = lambda: (stat := process_stat(child)) is None or not stat.running  # noqa: E731
        assert wait_for(gone, 10), "the child outlived its guardian"
        assert time.monotonic() - started < 10
        assert open(state + ".cleaned").read() == "finally ran"  # it unwound, it was not killed
    finally:
        if boss.poll() is None:
            boss.kill()
            boss.wait()
