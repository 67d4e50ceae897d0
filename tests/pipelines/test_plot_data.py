"""The plot data files have every field dvc.yaml's plot definitions and the custom templates in
``.dvc/plots/`` name, as their producers write them; and the tune-grid and seed summaries by hand."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.evaluation import NamedModel, evaluate_models, interpolation_curve
from pipelines.evaluation.plot_data import models_plot, name_endpoints
from pipelines.models import ModelCard, build_model
from pipelines.tuning import grid, grid_scores, with_point_spread
from tests.conftest import REPO


def _trial_rows():
    return [
        {"method": "mixup", "alpha": 0.2, "epochs_run": 4, "stopped_early": False, "val_accuracy": 0.90},
        {"method": "mixup", "alpha": 0.2, "epochs_run": 4, "stopped_early": False, "val_accuracy": 0.94},
        {"method": "cutmix", "alpha": 0.2, "epochs_run": 2, "stopped_early": True, "val_accuracy": 0.80},
        {"method": "cutmix", "alpha": 0.2, "epochs_run": 4, "stopped_early": False, "val_accuracy": 0.85},
    ]


def _producers() -> dict[str, pd.DataFrame]:
    """Every plot file, as the code that writes it makes it (on tiny inputs)."""
    card = ModelCard("mlp", (1, 4, 4), 3, seed=0)
    a, b = (build_model("mlp", (1, 4, 4), 3, seed=s) for s in (1, 2))
    x = np.random.default_rng(0).normal(size=(30, 1, 4, 4)).astype(np.float32)
    y = np.arange(30) % 3
    evaluation, reliability = evaluate_models([NamedModel("base", "base", a), NamedModel("t00", "trial", b)], x, y)
    curve = interpolation_curve(card, a.state_dict(), b.state_dict(), {"val": (x, y), "test": (x, y)}, points=5)
    return {
        "models.csv": models_plot(evaluation, "classification"),
        "reliability.csv": reliability,
        "interpolation.csv": name_endpoints(curve, ["t00", "t01"]),
        "tune_grid.csv": pd.DataFrame(grid_scores(_trial_rows(), "val_accuracy")),
    }


def _plot_definitions():
    """(file name, properties) of every plot in dvc.yaml, stage-level and top-level."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage in dvc["stages"].values():
        for entry in stage.get("do", stage).get("plots", []):
            (path, props), = entry.items() if isinstance(entry, dict) else ((entry, {}),)
            yield path.rsplit("/", 1)[-1], props or {}
    for entry in dvc.get("plots", []):
        (_, props), = entry.items()
        for path, field in props["y"].items():
            yield path.rsplit("/", 1)[-1], {**props, "y": field}


def _template_fields(name: str, x: str, y: str) -> set[str]:
    text = (REPO / ".dvc" / "plots" / f"{name}.json").read_text()
    text = text.replace("<DVC_METRIC_X>", x).replace("<DVC_METRIC_Y>", y)
    spec = json.loads(text)
    fields = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("field"), str):
                fields.add(node["field"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    folded = {f for t in spec.get("transform", []) for f in t.get("fold", [])}
    made = {name for t in spec.get("transform", []) for name in t.get("as", [])}
    return (fields | folded) - made - {"rev"}  # DVC adds rev to every row


def test_every_plot_names_fields_its_file_has():
    produced = _producers()
    checked = 0
    for file, props in _plot_definitions():
        if file not in produced:
            continue  # DVCLive's series (step, <metric>), and PNG images
        columns = set(produced[file].columns)
        named = {props[k] for k in ("x", "y") if isinstance(props.get(k), str)}
        template = props.get("template")
        if template and (REPO / ".dvc" / "plots" / f"{template}.json").exists():
            named |= _template_fields(template, props.get("x", ""), props.get("y", ""))
        assert named <= columns, f"{file}: {sorted(named - columns)} missing"
        checked += 1
    assert checked == 4


def test_templates_are_vega_lite_with_the_data_anchor():
    for path in sorted((REPO / ".dvc" / "plots").glob("*.json")):
        spec = json.loads(path.read_text())
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/"), path.name
        assert spec["data"] == {"values": "<DVC_METRIC_DATA>"} and spec["title"] == "<DVC_METRIC_TITLE>", path.name
        assert re.search(r"<DVC_METRIC_(X|Y)_LABEL>", path.read_text()), path.name


def test_grid_cells_by_hand():
    cells = {(c["method"], c["alpha"]): c for c in grid_scores(_trial_rows(), "val_accuracy")}
    mixup, cutmix = cells["mixup", 0.2], cells["cutmix", 0.2]
    # mixup: mean 0.92, sample std sqrt(2 * 0.02² / 1) = 0.028284
    assert mixup["score"] == pytest.approx(0.92) and mixup["score_std"] == pytest.approx(0.02 * 2**0.5)
    assert mixup["label"] == "0.920±0.028" and not mixup["dark"] and cutmix["dark"]
    # cutmix: only the seed that ran 4 epochs counts (the other was pruned at 2)
    assert cutmix["label"] == "0.850" and cutmix["seeds"] == 1 and cutmix["score_std"] is None
    pruned = grid_scores([{**_trial_rows()[2], "method": "mixup", "alpha": 1.0}], "val_accuracy")
    assert pruned[0]["label"] == "0.800 (e2)"


def test_point_spread_counts_only_seeds_that_ran_every_epoch():
    rows = with_point_spread(_trial_rows(), "val_accuracy", epochs=4)
    assert rows[0]["point_val_accuracy_mean"] == pytest.approx(0.92)
    assert rows[1]["point_val_accuracy_std"] == pytest.approx(0.02 * 2**0.5)
    assert rows[2]["point_val_accuracy_mean"] == pytest.approx(0.85) and rows[2]["point_val_accuracy_std"] is None


def test_seeds_repeat_each_point_and_keep_the_first_seeds_names():
    names = [p.name for p in grid(["mixup"], [0.2, 1.0], seeds=2)]
    assert names == ["t00-mixup-a0.2", "t00-mixup-a0.2-s1", "t01-mixup-a1", "t01-mixup-a1-s1"]
    assert [p.name for p in grid(["mixup"], [0.2, 1.0])] == names[::2]


def test_evaluation_pairs_every_model_with_the_base():
    x = np.random.default_rng(1).normal(size=(64, 1, 4, 4)).astype(np.float32)
    y = np.arange(64) % 3
    a, b = (build_model("mlp", (1, 4, 4), 3, seed=s) for s in (1, 2))
    models = [NamedModel("base", "base", a), NamedModel("same", "merged", a), NamedModel("other", "trial", b)]
    table, _ = evaluate_models(models, x, y, seed=3)
    rows = table.set_index("model")
    for name in ("base", "same"):  # identical predictions: no difference, p = 1
        assert rows.loc[name, "accuracy_vs_base"] == 0 and rows.loc[name, "accuracy_p"] == 1.0
        assert rows.loc[name, "nll_vs_base_lo"] == rows.loc[name, "nll_vs_base_hi"] == 0 and rows.loc[name, "nll_p"] == 1.0
    assert rows.loc["other", "nll_vs_base"] == pytest.approx(rows.loc["other", "nll"] - rows.loc["base", "nll"], rel=1e-12)
    again, _ = evaluate_models(models, x, y, seed=3)
    assert again.equals(table)  # seeded resamples: the same table
    assert (rows["accuracy_lo"] <= rows["accuracy"]).all() and (rows["accuracy"] <= rows["accuracy_hi"]).all()
