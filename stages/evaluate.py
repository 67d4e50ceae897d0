"""Evaluate: the base model, every trial and every merged model on the test split.

Usage:
    python -m stages.evaluate

Reads ``evaluate``; writes ``<results>/evaluation.parquet`` (``evaluation`` table), ``metrics.json``
(DVC metrics: base, the trial best on validation, each merge) and CSV plot data under ``<plots>``.
"""

from __future__ import annotations

from pipelines import storage, tables
from pipelines.data import read_prepared
from pipelines.evaluation import NamedModel, evaluate_models
from pipelines.models import load_model, load_state_dict, model_from_state
from stages.common import entrypoint, params

METRICS = ("accuracy", "nll", "ece", "brier")


@entrypoint("evaluate")
def main(argv: list[str]) -> None:
    p = params()
    test = read_prepared(p.paths.prepared, "test")
    base, card = load_model(p.paths.base_model)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.TRIALS)
    merges = tables.read_table(storage.join(p.paths.results, "merges.parquet"), tables.MERGES)
    models = [NamedModel("base", "base", base)]
    models += [NamedModel(name, "trial", load_model(path)[0]) for name, path in zip(trials["trial"], trials["checkpoint"], strict=True)]
    models += [
        NamedModel(method, "merged", model_from_state(card, load_state_dict(path)))
        for method, path in zip(merges["method"], merges["checkpoint"], strict=True)
    ]
    evaluation, reliability = evaluate_models(models, test.x, test.y, p.evaluate.ece_bins, p.evaluate.batch_size)
    tables.write_table(evaluation, storage.join(p.paths.results, "evaluation.parquet"), tables.EVALUATION)

    by_name = evaluation.set_index("model")
    best_trial = trials.sort_values(["val_accuracy", "val_loss"], ascending=[False, True])["trial"].iloc[0]
    summary = {"base": "base", "best_trial": best_trial, **{m: m for m in merges["method"]}}
    metrics = {key: {m: round(float(by_name.loc[name, m]), 6) for m in METRICS} for key, name in summary.items()}
    metrics["best_trial"]["name"] = best_trial
    storage.write_json("metrics.json", {"test": metrics})
    storage.write_text(storage.join(p.paths.plots, "models.csv"), evaluation.to_csv(index=False))
    storage.write_text(storage.join(p.paths.plots, "reliability.csv"), reliability.to_csv(index=False))
    print(evaluation[["model", "kind", "accuracy", "nll", "ece"]].to_string(index=False))


if __name__ == "__main__":
    main()
