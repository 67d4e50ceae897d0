import argparse

import pandas as pd
import pytest

from pipelines import tables
from pipelines.cli import build_parser, main
from pipelines.experiments import compare_table
from tests.result_rows import evaluation_frame


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
    rows = evaluation_frame(model=["base", "soup"], kind=["base", "merged"], num_samples=[5, 5], accuracy=[0.8, 1.0],
                            nll=[0.5, 0.1], ece=[0.1, 0.0], brier=[0.3, 0.0])
    tables.write_table(rows, "results/evaluation.parquet", "evaluation")
    frame = compare_table(["workspace"], "evaluation", "accuracy")
    assert frame["workspace"].to_dict() == {"base": 0.8, "soup": 1.0}
    assert main(["compare", "--metric", "nll"]) == 0
    assert "soup" in capsys.readouterr().out
    assert main(["compare", "--metric", "speed"]) == 2
    assert "no metric 'speed'" in capsys.readouterr().err
    assert main(["stage", "nope"]) == 2


def test_compare_of_two_revisions_marks_only_differences_beyond_the_noise(monkeypatch):
    import pipelines.experiments as experiments

    def at(accuracy, lo, hi):
        return evaluation_frame(model=["base", "soup"], kind=["base", "merged"], num_samples=[5, 5], accuracy=accuracy,
                                nll=[0.5, 0.1], ece=[0.1, 0.0], brier=[0.3, 0.0]).assign(accuracy_lo=lo, accuracy_hi=hi)

    frames = {"a": at([0.80, 0.90], [0.70, 0.85], [0.85, 0.95]), "b": at([0.95, 0.92], [0.90, 0.88], [0.99, 0.96])}
    monkeypatch.setattr(experiments, "read_table_at", lambda path, table, rev: frames[rev])
    monkeypatch.setattr(experiments, "results_dir_at", lambda rev: "results")
    frame = compare_table(["a", "b"], "evaluation", "accuracy")
    # base: b's [0.90, 0.99] lies above a's [0.70, 0.85]; soup: [0.88, 0.96] overlaps [0.85, 0.95]
    assert frame["b beyond noise"].to_dict() == {"base": True, "soup": False}
    assert frame["b - a"].round(6).to_dict() == {"base": 0.15, "soup": 0.02}
    text = experiments.format_comparison(frame, ["a", "b"])
    assert "0.8000 [0.7000, 0.8500]" in text and "+0.1500 *" in text and "+0.0200 *" not in text


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"mixpipe {name}: {action.dest} has no help"
        sub.format_help()  # a % in a help text that argparse cannot format fails here


def test_offline_plots_check_the_registry_integrity_and_use_the_cache(tmp_path, monkeypatch):
    import base64
    import hashlib

    import pipelines.offline_plots as offline
    from pipelines.errors import MixpipeError

    data = b"vega tarball bytes"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    offline._check_integrity(data, good, "vega@5")
    with pytest.raises(MixpipeError, match="does not match its pinned sha512 integrity"):
        offline._check_integrity(data + b"!", good, "vega@5")
    for name, version, _, _ in offline.SCRIPTS:  # a filled cache: nothing is fetched
        (tmp_path / f"{name}-{version}.min.js").write_text("// cached")
    monkeypatch.setattr(offline.urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched although cached"))
    assert [p.name for p in offline.vega_scripts(tmp_path)] == [f"{n}-{v}.min.js" for n, v, _, _ in offline.SCRIPTS]
    assert "{plot_divs}" in offline.PAGE and "http" not in offline.PAGE  # the page loads nothing from the network
