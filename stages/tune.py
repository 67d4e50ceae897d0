"""Tune: fine-tune the base model over a grid of mixing methods x alphas with Ray Tune, pruned by
synchronous successive halving (deterministic for a given seed; a killed sweep resumes).

Usage:
    python -m stages.tune

Reads ``seed``, ``tune``, ``mixing`` (all but method, alpha and source) and ``evaluate.batch_size``; writes
``<trials>/<trial>/{model.safetensors,card.json}`` for every trial (early-stopped ones included),
``<results>/trials.parquet`` (``trials`` table: validation scores with 95% intervals, and with
``tune.seeds`` > 1 each grid point's mean and std across its seeds), ``<results>/best_params.yaml``
and the method x alpha grid for a heatmap (``<plots>/tune_grid.csv``).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import yaml

from pipelines import storage, tables
from pipelines.config import fingerprint
from pipelines.data import ArrayDataset, read_prepared
from pipelines.training.input_plan import training_data
from pipelines.evaluation import bootstrap_seed, score_state
from pipelines.locks import run_lock
from pipelines.mixing import MixingSpec
from pipelines.models import load_card, load_state_dict, model_from_state, save_checkpoint
from pipelines.models.checkpoints import WEIGHTS
from pipelines.seeding import derive_seed
from pipelines.tasks import get_task
from pipelines.training import TrainJob
from pipelines.tuning import grid, grid_scores, run_sweep, with_point_spread
from stages.common import code_version, entrypoint, params, run_state_uri, stage_ray


@entrypoint("tune", uses_ray=True)
def main(argv: list[str]) -> None:
    p = params("data", "mixing", "tune")
    t = p.tune
    data = training_data(p, "tune")
    card = load_card(p.paths.base_model)
    model_from_state(card, load_state_dict(p.paths.base_model))  # a damaged checkpoint fails here, not in every trial
    weights = storage.read_bytes(storage.join(p.paths.base_model, WEIGHTS))
    mixing = MixingSpec.from_params(p.mixing, method="none", alpha=1.0)  # each trial sets method, alpha, options
    name = f"tune-{fingerprint(p.seed, t, mixing, p.input, p.evaluate.batch_size, data.fingerprints, storage.sha256_bytes(weights), code_version())}"
    template = TrainJob(
        run_name=name, card=card, epochs=t.epochs, batch_size=t.batch_size, optim=t.optim, mixing=mixing,
        seed=derive_seed(p.seed, "tune"), storage_path=run_state_uri(p), num_workers=t.num_workers,
        cpus_per_worker=t.cpus_per_worker, use_gpu=t.use_gpu, init_weights=weights,
        val_batch_size=p.evaluate.batch_size, deterministic=t.deterministic, params_key="tune", **data.job_fields(p),
    )
    points = grid(t.methods, t.alphas, {m: MixingSpec.from_params(p.mixing, method=m).options for m in t.methods}, t.seeds)
    with run_lock(template.storage_path, name, "tune"), stage_ray(p) as connection:
        template = replace(template, **connection.waits(p.ray))
        data = data.reachable(p, connection)
        outcomes = run_sweep(
            template, points, data.train, data.val, experiment_name=name, grace_period=t.grace_period,
            reduction_factor=t.reduction_factor, max_concurrent_trials=t.max_concurrent_trials,
        )

    task = get_task(card.task)
    score = task.score_column
    interval_seed = bootstrap_seed(p.seed, "val")
    val = data.val.normalised() if isinstance(data.val, ArrayDataset) else read_prepared(p.paths.prepared, "val")
    rows = []
    for o in outcomes:
        directory = storage.join(p.paths.trials, o.point.name)
        info = {"method": o.point.method, "alpha": o.point.alpha, "epochs": o.epochs_run, score: o.val_score}
        save_checkpoint(directory, o.weights, replace(card, info=info))
        # the intervals come from the checkpoint's outputs on the whole split (the loop's own
        # numbers, which rank the trials, are sums over ranks and carry none)
        bounds = score_state(card, o.weights, val.x, val.y, p.evaluate.batch_size, interval_seed=interval_seed)
        rows.append({"trial": o.point.name, "method": o.point.method, "alpha": o.point.alpha,
                     "seed_index": o.point.seed_index, "epochs_run": o.epochs_run, "stopped_early": o.epochs_run < t.epochs,
                     "val_loss": o.val_loss, "val_loss_lo": bounds[f"{task.loss}_lo"], "val_loss_hi": bounds[f"{task.loss}_hi"],
                     score: o.val_score, f"{score}_lo": bounds[f"{task.score}_lo"], f"{score}_hi": bounds[f"{task.score}_hi"],
                     "checkpoint": directory})
    rows = with_point_spread(rows, score, t.epochs)
    trials = pd.DataFrame(rows)
    tables.write_table(trials, storage.join(p.paths.results, "trials.parquet"), tables.table_for("trials", card.task))
    storage.write_text(storage.join(p.paths.plots, "tune_grid.csv"), pd.DataFrame(grid_scores(rows, score)).to_csv(index=False))
    best = max(outcomes, key=lambda o: (o.val_score, -o.val_loss))
    best_params = {"trial": best.point.name, "mixing": {"method": best.point.method, "alpha": best.point.alpha},
                   score: best.val_score}
    storage.write_text(storage.join(p.paths.results, "best_params.yaml"), yaml.safe_dump(best_params, sort_keys=True))
    print(trials[["trial", "epochs_run", score]].to_string(index=False))


if __name__ == "__main__":
    main()
