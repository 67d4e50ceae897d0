"""A bad params.yaml stops every stage before any work, with one line naming the key."""

import os
import subprocess
import sys

import pytest
import yaml

STAGES = ["prepare", "train", "merge"]  # one wrapper serves all; each run costs imports


@pytest.mark.parametrize("stage", STAGES)
def test_stage_exits_2_with_one_line(tmp_path, repo_root, stage):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["mixing"]["alpha"] = -1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=tmp_path,
        env={**os.environ, "MIXPIPE_PARAMS": str(path), "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"mixpipe {stage}: error: {path}: mixing.alpha input should be greater than 0, got -1"]
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_augment_rejects_a_method_not_in_params(tmp_path, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "stages.augment", "fmix"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "METHOD in augment.methods ['mixup', 'cutmix']" in result.stderr


def run_stage(repo_root, cwd, params, *args):
    path = cwd / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env={**os.environ, "MIXPIPE_PARAMS": str(path), "PYTHONPATH": str(repo_root)},
        capture_output=True, text=True, timeout=120,
    )


def test_credentials_in_a_url_stop_the_stage_without_printing_them(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"].update(name="cifar10", source="s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/cifar-10-python.tar.gz")
    result = run_stage(repo_root, tmp_path, params, "stages.prepare")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"mixpipe prepare: error: {tmp_path / 'params.yaml'}: data.source must not hold credentials")
    assert "AWS_ACCESS_KEY_ID" in line and "s3://***@bucket/" in line
    assert "wJalrXUtnFEMI" not in result.stderr + result.stdout and "AKIAEXAMPLE" not in result.stderr + result.stdout


def test_an_unreachable_cluster_fails_the_stage_at_once_in_one_line(tmp_path, repo_root):
    from pipelines.cluster.network import free_port

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert run_stage(repo_root, tmp_path, params, "stages.prepare").returncode == 0
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    params["ray"].update(address=address, connect_timeout_s=5)
    result = run_stage(repo_root, tmp_path, params, "stages.augment", "mixup")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"mixpipe augment: error: could not reach Ray at {address} within 5s:")
    assert not (tmp_path / "data/shards").exists()
