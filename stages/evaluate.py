"""Evaluate: the base model, every trial and every merged model on the test split.

Usage:
    python -m stages.evaluate

Reads ``evaluate``; writes ``<results>/evaluation.parquet`` (``evaluation`` table), ``<metrics>`` (``metrics.json``)
(DVC metrics: base, the trial best on validation, each merge) and CSV plot data under ``<plots>``.
Regression reports R², and MSE/RMSE/MAE in the target's units (``target_std`` of prepare's stats).
"""

from __future__ import annotations

from pipelines import storage, tables
from pipelines.data import read_prepared
from pipelines.evaluation import NamedModel, evaluate_models
from pipelines.models import load_model, load_state_dict, model_from_state
from pipelines.tasks import get_task
from stages.common import entrypoint, params, target_scale

@entrypoint("evaluate")
def main(argv: list[str]) -> None:
    p = params()
    test = read_prepared(p.paths.prepared, "test")
    base, card = load_model(p.paths.base_model)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.table_for("trials", card.task))
    merges = tables.read_table(storage.join(p.paths.results, "merges.parquet"), tables.table_for("merges", card.task))
    models = [NamedModel("base", "base", base)]
    models += [NamedModel(name, "trial", load_model(path)[0]) for name, path in zip(trials["trial"], trials["checkpoint"], strict=True)]
    models += [
        NamedModel(method, "merged", model_from_state(card, load_state_dict(path)))
        for method, path in zip(merges["method"], merges["checkpoint"], strict=True)
    ]
    evaluation, reliability = evaluate_models(
        models, test.x, test.y, p.evaluate.ece_bins, p.evaluate.batch_size, card.task, target_scale(p.paths.prepared, card.task)
    )
    tables.write_table(evaluation, storage.join(p.paths.results, "evaluation.parquet"), tables.table_for("evaluation", card.task))

    by_name = evaluation.set_index("model")
    score = get_task(card.task).score_column
    best_trial = trials.sort_values([score, "val_loss"], ascending=[False, True])["trial"].iloc[0]
    summary = {"base": "base", "best_trial": best_trial, **{m: m for m in merges["method"]}}
    metric_names = list(tables.METRICS[card.task])
    metrics = {key: {m: round(float(by_name.loc[name, m]), 6) for m in metric_names} for key, name in summary.items()}
    metrics["best_trial"]["name"] = best_trial
    storage.write_json(p.paths.metrics, {"test": metrics})
    plotted = evaluation.assign(score=evaluation[metric_names[0]])  # the plot's x: accuracy or R²
    storage.write_text(storage.join(p.paths.plots, "models.csv"), plotted.to_csv(index=False))
    storage.write_text(storage.join(p.paths.plots, "reliability.csv"), reliability.to_csv(index=False))
    print(evaluation[["model", "kind", *metric_names[:3]]].to_string(index=False))


if __name__ == "__main__":
    main()
