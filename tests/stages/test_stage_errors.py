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
