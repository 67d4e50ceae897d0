import pandas as pd
import pytest

from pipelines import tables
from pipelines.cli import build_parser, main
from pipelines.experiments import compare_table


def test_submit_without_a_command_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert main(["submit", "--"]) == 2
    assert "give the command to run after --" in capsys.readouterr().err


def test_parser_knows_every_verb():
    parser = build_parser()
    assert parser.parse_args(["cluster", "start", "--workers", "2"]).workers == 2
    assert parser.parse_args(["submit", "--", "python", "-V"]).command == ["--", "python", "-V"]
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster", "explode"])


def test_compare_reads_the_workspace_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = pd.DataFrame({"model": ["base", "soup"], "kind": ["base", "merged"], "num_samples": [5, 5],
                         "accuracy": [0.8, 1.0], "nll": [0.5, 0.1], "ece": [0.1, 0.0], "brier": [0.3, 0.0]})
    tables.write_table(rows, "results/evaluation.parquet", "evaluation")
    frame = compare_table(["workspace"], "evaluation", "accuracy")
    assert frame["workspace"].to_dict() == {"base": 0.8, "soup": 1.0}
    assert main(["compare", "--metric", "nll"]) == 0
    assert "soup" in capsys.readouterr().out
    assert main(["compare", "--metric", "speed"]) == 2
    assert "no metric 'speed'" in capsys.readouterr().err
    assert main(["stage", "nope"]) == 2
