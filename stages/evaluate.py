"""Evaluate: the base model, every trial and every merged model on the test split.

Usage:
    python -m stages.evaluate

Reads ``seed``, ``evaluate`` and ``merge.include_base``; writes ``<results>/evaluation.parquet``
(``evaluation`` table: every metric with its 95% interval and the paired comparison against the
base), ``<metrics>`` (``metrics.json``: the base, the trial and the merge best on validation, with
intervals), ``<results>/model_metrics.json`` (every model), CSV plot data under ``<plots>``, and
the loss along the line between the two models best on validation (those merge chooses from:
the trials, and the base with ``merge.include_base``) in ``<plots>/interpolation.csv``
(``evaluate.interpolation_points`` points) with its barrier in ``<results>/interpolation.json``.
Regression reports R², and MSE/RMSE/MAE in the target's units (``target_std`` of prepare's stats).
"""

from __future__ import annotations

from pipelines import storage, tables
from pipelines.data import read_prepared
from pipelines.evaluation import (
    HeldOutObjective, NamedModel, best_two, bootstrap_seed, evaluate_models, interpolation_curve, loss_barrier,
)
from pipelines.evaluation.plot_data import models_plot, name_endpoints
from pipelines.evaluation.summary import evaluation_view, model_metrics, summary_metrics
from pipelines.models import load_card, load_state_dict, model_from_state
from stages.common import entrypoint, params, target_scale

@entrypoint("evaluate")
def main(argv: list[str]) -> None:
    p = params()
    test = read_prepared(p.paths.prepared, "test")
    card = load_card(p.paths.base_model)
    base = load_state_dict(p.paths.base_model)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.table_for("trials", card.task))
    merges = tables.read_table(storage.join(p.paths.results, "merges.parquet"), tables.table_for("merges", card.task))
    names, states = list(trials["trial"]), [load_state_dict(path) for path in trials["checkpoint"]]
    models = [NamedModel("base", "base", model_from_state(card, base))]
    models += [NamedModel(name, "trial", model_from_state(card, state)) for name, state in zip(names, states, strict=True)]
    models += [
        NamedModel(method, "merged", model_from_state(card, load_state_dict(path)))
        for method, path in zip(merges["method"], merges["checkpoint"], strict=True)
    ]
    evaluation, reliability = evaluate_models(
        models, test.x, test.y, p.evaluate.ece_bins, p.evaluate.batch_size, card.task,
        target_scale(p.paths.prepared, card.task), bootstrap_seed(p.seed, "test"),
    )
    tables.write_table(evaluation, storage.join(p.paths.results, "evaluation.parquet"), tables.table_for("evaluation", card.task))
    storage.write_json(p.paths.metrics, summary_metrics(evaluation, trials, merges, card.task))
    storage.write_json(storage.join(p.paths.results, "model_metrics.json"), model_metrics(evaluation, card.task))
    storage.write_text(storage.join(p.paths.plots, "models.csv"), models_plot(evaluation, card.task).to_csv(index=False))
    storage.write_text(storage.join(p.paths.plots, "reliability.csv"), reliability.to_csv(index=False))

    if p.merge.include_base:  # the models merge chose its pair from
        names.append("base")
        states.append(base)
    val = read_prepared(p.paths.prepared, "val")
    objective = HeldOutObjective(card, val.x, val.y, p.evaluate.batch_size)
    best = best_two([objective(s)[0] for s in states])
    pair = [names[i] for i in best] if len(best) == 2 else ["base", names[0]]
    a, b = (states[i] for i in best) if len(best) == 2 else (base, states[0])
    curve = interpolation_curve(card, a, b, {"val": (val.x, val.y), "test": (test.x, test.y)}, p.evaluate.interpolation_points)
    curve = name_endpoints(curve, pair)
    storage.write_text(storage.join(p.paths.plots, "interpolation.csv"), curve.to_csv(index=False))
    barriers = {f"{split}_loss_barrier": round(loss_barrier(curve["t"], curve[f"{split}_loss"]), 6) for split in ("val", "test")}
    storage.write_json(storage.join(p.paths.results, "interpolation.json"), {"interpolation": {"pair": pair, **barriers}})
    print(evaluation_view(evaluation, card.task).to_string(index=False))

if __name__ == "__main__":
    main()
