"""One process per Ray run name: a second stage computing the same run stops in one line instead of
writing into the first one's run folder; a killed holder releases the lock with its process."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.locks import RunInUse, lock_path, run_lock
from stage_runs import REPO, one_line, repo_params, run_in_process


def test_a_held_run_is_refused_with_its_holder_and_freed_when_the_holder_dies(tmp_path):
    store = str(tmp_path / "ray")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipelines.locks import run_lock\n"
         f"with run_lock({store!r}, 'train-abc', 'train'):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunInUse, match=rf"^train: run train-abc is in use by pid {holder.pid} on "), run_lock(store, "train-abc", "train"):
            pass
        with run_lock(store, "train-other", "train"):  # another name is another run
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(store, "train-abc", "train"):
        assert lock_path(store, "train-abc") == tmp_path / "ray" / "train-abc.lock"


def test_runs_in_object_storage_lock_a_file_of_this_machine():
    path = lock_path("s3://bucket/store/ray", "tune-abc")
    assert path.parent.name == "mixpipe-run-locks" and path != lock_path("s3://bucket/other/ray", "tune-abc")


@pytest.mark.integration
def test_a_second_train_stage_on_the_same_run_stops_before_starting_ray(tmp_path, monkeypatch, capsys):
    params = repo_params()
    params["train"].update(epochs=1)
    assert run_in_process(monkeypatch, capsys, tmp_path, params, "prepare")[0] == 0
    first = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "MIXPIPE_PARAMS": str(tmp_path / "params.yaml"),
                                                             "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / ".mixpipe/ray").glob("train-*.lock")) and time.monotonic() < deadline:
            time.sleep(0.1)
        message = one_line(*run_in_process(monkeypatch, capsys, tmp_path, params, "train"), "train")
        assert first.poll() is None
        assert message.startswith("train: run train-") and f"is in use by pid {first.pid} on " in message
        assert not (tmp_path / "models").exists()
    finally:
        first.send_signal(signal.SIGTERM)  # unwinds the stage and the Ray instance it was starting
        first.wait(timeout=120)
