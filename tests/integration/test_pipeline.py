"""The whole DAG, run by DVC on a tiny params override in a committed copy of the repository; then
a second pipeline beside it on the same machine, and the ways a run can be interrupted."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import storage, tables
from pipelines.data import read_split
from pipelines.lifetime import descendants, process_stat
from pipelines.models import load_model

from .helpers import TINY_PARAMS, finish, git, kill_all, make_workspace, run, running, start, wait_until

pytestmark = pytest.mark.integration

STAGES = ["validate", "prepare", "augment@mixup", "train", "tune", "merge", "evaluate", "report"]
TRIALS = ["t00-mixup-a0.2", "t01-mixup-a1", "t02-cutmix-a0.2", "t03-cutmix-a1"]
MERGES = TINY_PARAMS["merge"]["methods"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("pipeline"), TINY_PARAMS)
    first = run(root, "dvc", "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout, stage
    return root


def test_prepare_writes_stratified_validated_splits(workspace):
    splits = {name: read_split(str(workspace / "data/prepared" / name)).normalised() for name in ("train", "val", "test")}
    assert {n: len(s) for n, s in splits.items()} == {"train": 1259, "val": 269, "test": 269}
    ids = [set(s.ids.tolist()) for s in splits.values()]
    assert set.union(*ids) == set(range(1797)) and sum(map(len, ids)) == 1797
    stats = json.loads((workspace / "data/prepared/stats.json").read_text())
    assert stats["splits"]["test"]["rows"] == 269 and abs(float(splits["train"].x.mean())) < 1e-5


def test_augment_writes_shards_that_match_their_manifest(workspace):
    method = "mixup"
    directory = workspace / "data/shards" / method
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["rows"] == 1259 and len(manifest["shards"]) == 2
    preview = workspace / "results/plots/augment" / f"{method}.png"
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        assert storage.sha256_file(str(path)) == shard["sha256"]
        frame = tables.read_table(str(path), "mixed_samples")
        assert len(frame) == shard["rows"]
        assert ((frame["lam"] >= 0) & (frame["lam"] <= 1)).all()


def test_train_writes_checkpoint_history_and_dvclive(workspace):
    model, card = load_model(str(workspace / "models/base"))
    assert card.model == "cnn" and card.info["epochs"] == 2
    assert card.info["mixing"] == "mixup" and card.info["mixing_source"] == "shards"
    history = tables.read_table(str(workspace / "results/train_history.parquet"), "train_history")
    assert history["epoch"].tolist() == [1, 2] and set(history["world_size"]) == {2}
    assert history["val_accuracy"].iloc[-1] == pytest.approx(card.info["val_accuracy"])
    live = json.loads((workspace / "dvclive/train/metrics.json").read_text())
    assert live["step"] == 2 and live["val_accuracy"] == pytest.approx(card.info["val_accuracy"])
    assert (workspace / "dvclive/train/plots/metrics/val_accuracy.tsv").exists()


def test_tune_keeps_every_trial(workspace):
    trials = tables.read_table(str(workspace / "results/trials.parquet"), "trials")
    assert trials["trial"].tolist() == TRIALS
    assert (trials["epochs_run"] == 1).all() and not trials["stopped_early"].any()
    for path in trials["checkpoint"]:
        load_model(str(workspace / path))
    best = yaml.safe_load((workspace / "results/best_params.yaml").read_text())
    assert best["val_accuracy"] == pytest.approx(trials["val_accuracy"].max())


def test_merge_and_evaluate_cover_every_model(workspace):
    merges = tables.read_table(str(workspace / "results/merges.parquet"), "merges")
    assert merges["method"].tolist() == MERGES
    counts = merges.set_index("method")["num_models"]
    assert counts["uniform_soup"] == counts["ties"] == counts["model_stock"] == counts["fisher"] == 4
    assert counts["adamerging"] == counts["pleas"] == 4
    assert counts["slerp"] == 2
    assert 1 <= counts["greedy_soup"] <= 4
    by_method = merges.set_index("method")
    assert (merges["peak_memory_mib"] >= 0).all() and (merges["seconds"] > 0).all()
    # the local instance of the search has no GPU here: AdaMerging stays in the stage too
    ran_on = by_method["ran_on"]
    assert (ran_on.drop("adamerging") == "stage cpu").all()
    assert ran_on["adamerging"] == ("stage cpu" if not torch.cuda.is_available() else "ray task cuda")
    # the searched coefficients: every grid point is in merge_search, the chosen one is in merges
    search = tables.read_table(str(workspace / "results/merge_search.parquet"), "merge_search")
    assert search.groupby("method").size().to_dict() == {"task_arithmetic": 1, "ties": 2}
    for method in ("task_arithmetic", "ties"):
        rows = search[search["method"] == method]
        chosen = rows[rows["chosen"]]
        assert len(chosen) == 1 and chosen["val_accuracy"].iloc[0] == rows["val_accuracy"].max()
        assert json.loads(by_method.loc[method, "params"]).items() >= json.loads(chosen["params"].iloc[0]).items()
        assert by_method.loc[method, "val_accuracy"] == pytest.approx(chosen["val_accuracy"].iloc[0])
    curve = (workspace / "results/plots/interpolation.csv").read_text().splitlines()
    assert curve[0] == "t,val_loss,val_accuracy,test_loss,test_accuracy,endpoint" and len(curve) == 26
    interpolation = json.loads((workspace / "results/interpolation.json").read_text())["interpolation"]
    assert len(interpolation["pair"]) == 2 and set(interpolation["pair"]) <= set(TRIALS)
    assert curve[1].endswith(f"t=0: {interpolation['pair'][0]}") and curve[-1].endswith(f"t=1: {interpolation['pair'][1]}")
    evaluation = tables.read_table(str(workspace / "results/evaluation.parquet"), "evaluation")
    assert evaluation["model"].tolist() == ["base", *TRIALS, *MERGES]
    assert (evaluation["num_samples"] == 269).all() and (evaluation["accuracy"] > 0.5).all()
    assert (evaluation["accuracy_lo"] <= evaluation["accuracy"]).all() and (evaluation["accuracy"] <= evaluation["accuracy_hi"]).all()
    by_model = evaluation.set_index("model")
    assert by_model.loc["base", "accuracy_p"] == 1.0 and by_model.loc["base", "nll_vs_base"] == 0.0
    summary = json.loads((workspace / "metrics.json").read_text())
    assert set(summary) == {"score", "base", "trial", "merge"}
    assert summary["base"]["test"] == pytest.approx(by_model.loc["base", "accuracy"], abs=1e-6)
    assert summary["trial"]["name"] in TRIALS and summary["merge"]["name"] in MERGES
    detail = json.loads((workspace / "results/model_metrics.json").read_text())["test"]
    for method in MERGES:  # the merge stage's test metrics and intervals (same resamples) are the evaluate stage's
        for column in ("accuracy", "accuracy_lo", "accuracy_hi", "nll_lo", "nll_hi"):
            assert by_method.loc[method, f"test_{column}"] == pytest.approx(detail[method][column], abs=1e-6)
    trials = tables.read_table(str(workspace / "results/trials.parquet"), "trials")
    assert ((trials["val_accuracy_lo"] <= trials["val_accuracy"]) & (trials["val_accuracy"] <= trials["val_accuracy_hi"])).all()
    assert (workspace / "results/plots/models.csv").read_text().startswith("model,kind,num_samples,accuracy,accuracy_lo")
    page = (workspace / "report/index.html").read_text()
    assert all(f'src="{name}.png"' in page for name in ("training", "accuracy", "reliability", "interpolation", "tune_grid"))
    assert "Best on validation: <b>" in page


def test_dvc_plots_render_every_plot_with_its_title_offline(workspace):
    from pipelines.offline_plots import SCRIPTS

    cache = workspace / ".mixpipe" / "vega"  # the scripts as `mixpipe plots` keeps them (no network here)
    cache.mkdir(parents=True, exist_ok=True)
    for name, version, _, _ in SCRIPTS:
        (cache / f"{name}-{version}.min.js").write_text(f"// {name}")
    run(workspace, "mixpipe", "plots", "-o", "shown")
    page = (workspace / "shown" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and '<script src="vega-lite.min.js">' in page
    for title in ("Base model - loss by epoch", "Tune grid - validation score by mixing method and alpha",
                  "Test accuracy by model", "Reliability on the test split", "t=0 and t=1 are named"):
        assert title in page, title
    assert (workspace / "shown" / "vega-embed.min.js").read_text() == "// vega-embed"


def test_second_repro_does_nothing(workspace):
    again = run(workspace, "dvc", "repro")
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout


def test_a_bad_param_stops_dvc_before_any_output_is_touched(workspace):
    """DVC removes a stage's outputs before running it: the bad value must stop `dvc repro` in the
    validate stage, before train (whose params changed) loses its model, history and DVCLive files."""
    path = workspace / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["train"]["epochs"] = 0
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    outputs = [p for p in (workspace / "models", workspace / "dvclive", workspace / "results") if p.exists()]
    before = {str(f): f.stat().st_mtime_ns for root in outputs for f in root.rglob("*") if f.is_file()
              and f.name != "params_check.json"}
    try:
        failed = run(workspace, "dvc", "repro", check=False)
    finally:
        path.write_text(original)
    assert failed.returncode != 0
    assert "train.epochs input should be greater than 0, got 0" in failed.stderr
    assert "Running stage 'train'" not in failed.stdout
    after = {str(f): f.stat().st_mtime_ns for root in outputs for f in root.rglob("*") if f.is_file()
             and f.name != "params_check.json"}
    assert after == before
    again = run(workspace, "dvc", "repro")  # the valid params back: validate writes its check again, nothing else runs
    assert [line for line in again.stdout.splitlines() if line.startswith("Running stage")] == ["Running stage 'validate':"]


@pytest.mark.parametrize(
    ("key", "value", "changed"),
    [
        ("merge.include_base", True, {"merge", "evaluate"}),  # evaluate's interpolation picks from the same models
        ("evaluate.ece_bins", 10, {"merge", "evaluate"}),  # the merges table reports ECE too
        ("evaluate.interpolation_points", 5, {"evaluate"}),  # the curve is evaluation: merging does not run again
        ("train.epochs", 3, {"train"}),
        ("tune.alphas", [0.5], {"tune"}),
        ("mixing.alpha", 0.4, {"augment@mixup", "train"}),
        ("mixing.prob", 0.5, {"augment@mixup", "train", "tune"}),
        ("mixing.source", "online", {"train"}),
        ("mixing.loss", "decoupled", {"train", "tune"}),
        ("mixing.options", {"cutmix": {"cutmix_minmax": [0.2, 0.5]}}, {"augment@mixup", "train", "tune"}),
    ],
)
def test_params_are_listed_narrowly(workspace, key, value, changed):
    path = workspace / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    section, name = key.split(".")
    params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(workspace, "dvc", "status", "--json").stdout)
    finally:
        path.write_text(original)
    # downstream stages re-run too once these outputs change; `dvc status` lists the direct ones,
    # and validate, which checks every value first
    assert set(status) == {"validate", *changed}


def test_experiment_changes_the_metric_compare_reads_it_and_a_clone_gets_it(workspace, tmp_path):
    # a DVC remote (a folder here; the cluster tests use one on the S3 store) and a git remote, set
    # before the experiment runs, as a team would have them: `dvc exp push` sends the experiment's
    # outs to the default remote of its own commit
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    run(workspace, "dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    git(workspace, "remote", "add", "origin", str(origin))
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "baseline results")
    run(workspace, "dvc", "exp", "run", "-n", "ece5", "-S", "evaluate.ece_bins=5")
    shown = json.loads(run(workspace, "dvc", "exp", "show", "--json").stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")  # the commit the exp ran on
    base_exp = next(e for e in baseline["experiments"] if e["name"] == "ece5")["revs"][0]

    def metric(entry):
        return entry["data"]["metrics"]["results/model_metrics.json"]["data"]["test"]

    def params(entry):
        return entry["data"]["params"]["params.yaml"]["data"]["evaluate"]["ece_bins"]

    assert params(baseline) == 15 and params(base_exp) == 5
    assert {m: v["accuracy"] for m, v in metric(base_exp).items()} == {m: v["accuracy"] for m, v in metric(baseline).items()}
    # a model whose confidences all fall in one bin of either binning keeps its ECE; not every model does
    [model, *_] = [m for m in metric(baseline) if metric(base_exp)[m]["ece"] != metric(baseline)[m]["ece"]]
    compared = json.loads(run(workspace, "mixpipe", "compare", "HEAD", "ece5", "--metric", "ece", "--json").stdout)
    assert compared[model]["HEAD"] == pytest.approx(metric(baseline)[model]["ece"], abs=1e-6)
    assert compared[model]["HEAD lo"] == pytest.approx(metric(baseline)[model]["ece_lo"], abs=1e-6)
    assert compared[model]["ece5"] == pytest.approx(metric(base_exp)[model]["ece"], abs=1e-6)

    # the experiment reaches another clone: its git ref through the git remote, its outs through
    # the DVC remote
    git(workspace, "push", "-q", "origin", "HEAD:main")
    run(workspace, "dvc", "exp", "push", "origin", "ece5")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(clone))
    run(clone, "dvc", "exp", "pull", "origin", "ece5")
    pulled = json.loads(run(clone, "dvc", "exp", "show", "--all-commits", "--json").stdout)
    assert [e["name"] for entry in pulled for e in entry.get("experiments") or []] == ["ece5"]
    there = json.loads(run(clone, "mixpipe", "compare", "ece5", "--metric", "ece", "--json").stdout)
    assert there[model]["ece5"] == pytest.approx(metric(base_exp)[model]["ece"], abs=1e-6)


def test_a_killed_tune_stage_resumes_beside_another_pipeline_and_ends_where_an_uninterrupted_one_did(
    workspace, tmp_path
):
    """SIGKILL `python -m stages.tune` once two of its four trials have finished; then
    `dvc repro -f -s tune` here while a second workspace runs `dvc repro tune` on the same machine
    (two local Ray instances, no PID namespace between them). Both finish; the finished trials are
    not trained again, the others resume, and the outputs are byte for byte those of the
    uninterrupted sweep (DVC sees nothing changed).

    The second workspace is a copy of this one with another alpha: DVC finds its upstream stages up
    to date and runs a sweep of one trial beside the resumed one, on the same two CPUs (the deadlock
    of two local instances was a finished trial's placement group never released, because Train's
    cleaner could not tell its instance from the other)."""
    beside = tmp_path / "beside"
    shutil.copytree(workspace, beside, ignore=shutil.ignore_patterns(".mixpipe"))
    params = yaml.safe_load((beside / "params.yaml").read_text())
    params["tune"].update(methods=["mixup"], alphas=[0.3], max_concurrent_trials=1)
    (beside / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    trials_file = workspace / "results/trials.parquet"
    uninterrupted = trials_file.read_bytes()
    [sweep] = [p for p in (workspace / ".mixpipe/ray").iterdir() if p.name.startswith("tune-") and p.is_dir()]
    storage.filesystem(str(sweep))[0].rm(str(sweep), recursive=True)  # forget the finished sweep
    ledger = sweep / "ledger"

    def done() -> list[Path]:
        return sorted(ledger.glob("*.json")) if ledger.exists() else []

    stage = start(workspace, "python", "-m", "stages.tune")
    ours: list[int] = []
    try:
        assert wait_until(lambda: len(done()) >= 2 or stage.poll() is not None, 600)
        assert stage.poll() is None, finish(stage, check=False).stderr[-3000:]
        ours = descendants(stage.pid)
        stage.send_signal(signal.SIGKILL)
        ours += [child for pid in ours for child in descendants(pid)]  # started in between
    finally:
        if stage.poll() is None:
            stage.kill()
        finish(stage, check=False)
        kill_all(ours)  # Ray's agents outlive a SIGKILLed driver; these are the ones this test started
    kept = {path.name: path.stat().st_mtime_ns for path in done()}
    assert 2 <= len(kept) < 4

    resumed, second = start(workspace, "dvc", "repro", "-f", "-s", "tune"), start(beside, "dvc", "repro", "tune")
    resumed, second = finish(resumed), finish(second)
    assert "Running stage 'tune'" in resumed.stdout
    assert "Running stage 'tune'" in second.stdout and "Running stage 'train'" not in second.stdout
    trials = tables.read_table(str(beside / "results/trials.parquet"), "trials")
    assert trials["trial"].tolist() == ["t00-mixup-a0.3"]

    assert {path.name: path.stat().st_mtime_ns for path in done() if path.name in kept} == kept
    for name in kept:  # a finished trial's Train run started once, by the killed stage
        trial = name.removesuffix("-e001.json")
        assert len(list((sweep / trial / "mixpipe-attempts").iterdir())) == 1, trial
    assert trials_file.read_bytes() == uninterrupted
    status = json.loads(run(workspace, "dvc", "status", "--json").stdout)
    assert "tune" not in status  # same checkpoints and tables as the lock recorded


def test_a_killed_dvc_repro_leaves_no_stage_process_behind(workspace):
    """SIGKILL `dvc repro` while its train stage runs Ray: the stage notices that the DVC process
    is gone, stops, and takes its local Ray instance with it; nothing it started keeps running.
    DVC removes the train stage's outputs first: no test after this one reads them."""
    repro = start(workspace, "dvc", "repro", "-f", "-s", "train")

    def stage_and_ray_up() -> bool:
        names = {process_stat(pid).name for pid in descendants(repro.pid) if process_stat(pid)}
        return "raylet" in names or repro.poll() is not None

    started: list[int] = []
    try:
        assert wait_until(stage_and_ray_up, 300) and repro.poll() is None, finish(repro, check=False).stderr[-3000:]
        started = descendants(repro.pid)
        repro.send_signal(signal.SIGKILL)
        assert finish(repro, check=False).returncode == -signal.SIGKILL
        assert wait_until(lambda: not running(started), 90), [process_stat(pid) for pid in running(started)]
    finally:
        if repro.poll() is None:
            repro.kill()
            finish(repro, check=False)
        kill_all(started)


def test_train_refuses_a_shard_that_differs_from_its_manifest(workspace):
    """Last in the module: it spoils a shard. The check comes before Ray starts."""
    (workspace / "data/shards/mixup/part-00000.parquet").write_bytes(b"not parquet")
    failed = run(workspace, "python", "-m", "stages.train", check=False)
    assert failed.returncode != 0
    assert "part-00000.parquet: sha256 differs from the manifest" in failed.stderr
