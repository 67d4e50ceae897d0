"""``mixpipe compare`` on a revision whose tables are DVC outputs not in the cache: the error says
which command brings them, with and without a default remote."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.integration

WRITE_TABLE = (
    "from tests.result_rows import evaluation_frame; from pipelines import tables; "
    "tables.write_table(evaluation_frame(model=['base', 'soup'], kind=['base', 'merged'], num_samples=[5, 5], "
    "accuracy=[0.8, 1.0], nll=[0.5, 0.1], ece=[0.1, 0.0], brier=[0.3, 0.0]), 'results/evaluation.parquet', 'evaluation')"
)


def run(cwd, *args):
    return subprocess.run(list(args), cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def ran_elsewhere(tmp_path_factory):
    """A repository whose HEAD has evaluation.parquet as a DVC output, run and committed, then
    with its cache emptied: a fresh clone's situation."""
    repo = tmp_path_factory.mktemp("compare")
    run(repo, "git", "init", "-q")
    run(repo, sys.executable, "-m", "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n"
        f"    cmd: PYTHONPATH={REPO} {sys.executable} -c \"{WRITE_TABLE}\"\n"
        "    outs:\n      - results/evaluation.parquet\n"
    )
    run(repo, sys.executable, "-m", "dvc", "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "ran")
    run(repo, sys.executable, "-m", "dvc", "gc", "-w", "-f", "-q")  # keeps the workspace's: remove it too
    (repo / "results" / "evaluation.parquet").unlink()
    subprocess.run(["rm", "-rf", str(repo / ".dvc" / "cache")], check=True)
    return repo


def test_compare_says_how_to_recompute_when_there_is_no_remote(ran_elsewhere, monkeypatch, capsys):
    monkeypatch.chdir(ran_elsewhere)
    assert main(["compare", "HEAD"]) == 2
    err = capsys.readouterr().err
    assert "is a DVC output whose data is not in this repository's cache" in err
    assert "`dvc exp apply HEAD && dvc repro`" in err and "dvc remote add -d" in err
    assert err.count("\n") == 1  # one line


def test_compare_names_the_fetch_command_of_the_default_remote(ran_elsewhere, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ran_elsewhere)
    run(ran_elsewhere, sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "store", str(tmp_path / "empty-remote"))
    try:
        assert main(["compare", "HEAD"]) == 2
        err = capsys.readouterr().err
        assert "nor on the default remote 'store'" in err and "`dvc fetch -r store -A results/evaluation.parquet`" in err
        assert main(["compare", "no-such-exp"]) == 2
        assert "no experiment or revision 'no-such-exp' here has it as a DVC output" in capsys.readouterr().err
    finally:
        run(ran_elsewhere, sys.executable, "-m", "dvc", "remote", "remove", "store")


def test_compare_reads_a_revision_from_the_default_remote_when_the_cache_lacks_it(ran_elsewhere, tmp_path, monkeypatch, capsys):
    remote = tmp_path / "remote"
    monkeypatch.chdir(ran_elsewhere)
    run(ran_elsewhere, sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "store", str(remote))
    try:
        # fill the remote from another clone that still has the data: re-run it there and push
        other = tmp_path / "other"
        run(tmp_path, "git", "clone", "-q", str(ran_elsewhere), str(other))
        run(other, sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "store", str(remote))
        run(other, sys.executable, "-m", "dvc", "repro", "-q")
        run(other, sys.executable, "-m", "dvc", "push", "-q")
        assert not (ran_elsewhere / ".dvc" / "cache").exists() or not any((ran_elsewhere / ".dvc" / "cache").rglob("*.parquet"))
        assert main(["compare", "HEAD"]) == 0
        out = capsys.readouterr().out
        assert "soup" in out and "1.0000 [1.0000, 1.0000]" in out
    finally:
        run(ran_elsewhere, sys.executable, "-m", "dvc", "remote", "remove", "store")
