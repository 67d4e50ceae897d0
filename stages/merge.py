"""Merge: combine the tune stage's fine-tunes (optionally with the base) with each method in ``merge.methods``.

Usage:
    python -m stages.merge

Reads ``seed`` and ``merge``. Task-vector methods take the base model as the shared
initialisation; SLERP merges the two models with the best validation score; greedy soup scores
candidates on validation; Fisher merging and RegMean get each model's diagonal Fisher /
linear-input Grams on the validation split (Fisher labels sampled from a generator seeded by
``seed``). ``merge.search.<method>`` lists candidate values of its parameters: Ray Tune merges at
every grid point and the best on validation is kept. Writes ``<merged>/<method>.safetensors``,
``<results>/merges.parquet`` (``merges``: params, val/test metrics, seconds, peak memory),
``<results>/merge_search.parquet``, and the loss along the line between the two best fine-tunes
(``<plots>/interpolation.csv``, ``merge.interpolation_points`` points) with its barrier in
``<results>/interpolation.json``.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pandas as pd
import torch

from pipelines import storage, tables
from pipelines.config import fingerprint
from pipelines.locks import run_lock
from pipelines.data import read_prepared
from pipelines.evaluation import HeldOutObjective, bootstrap_seed, interpolation_curve, loss_barrier, score_state
from pipelines.evaluation.plot_data import name_endpoints
from pipelines.memory import peak_rss_above_start
from pipelines.merging import MERGE_METHODS, run_merge
from pipelines.merging.statistics import diagonal_fisher, linear_input_grams
from pipelines.models import load_card, load_state_dict, model_from_state
from pipelines.models.checkpoints import state_dict_bytes
from pipelines.seeding import derive_seed, torch_generator
from pipelines.tasks import get_task
from pipelines.tuning.merge_search import best_point, cached_points, search_merge_params
from stages.common import code_version, entrypoint, params, run_state_uri, stage_ray, target_scale


@entrypoint("merge", uses_ray=lambda p: bool(p.merge.search))
def main(argv: list[str]) -> None:
    p = params("merge")
    val, test = read_prepared(p.paths.prepared, "val"), read_prepared(p.paths.prepared, "test")
    card = load_card(p.paths.base_model)
    task, scale = get_task(card.task), target_scale(p.paths.prepared, card.task)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.table_for("trials", card.task))
    names = list(trials["trial"])
    states = [load_state_dict(path) for path in trials["checkpoint"]]
    base = load_state_dict(p.paths.base_model)
    if p.merge.include_base:
        names.append("base")
        states.append(base)
    objective = HeldOutObjective(card, val.x, val.y, p.evaluate.batch_size)

    def val_score(state):
        return objective(state)[0]

    own_scores = [val_score(s) for s in states]
    best_two = sorted(range(len(states)), key=lambda i: (-own_scores[i], i))[:2]
    statistics: dict[str, list] = {}

    def data_statistics(kind: str) -> list:
        """Fisher diagonals or linear-input Grams of every model on the validation split, once."""
        if kind not in statistics:
            x = torch.tensor(val.x)
            models = [model_from_state(card, s) for s in states]
            if kind == "fishers":
                statistics[kind] = [diagonal_fisher(m, x, torch_generator(derive_seed(p.seed, "fisher", i)), task=card.task)
                                    for i, m in enumerate(models)]
            else:
                statistics[kind] = [linear_input_grams(m, x) for m in models]
        return statistics[kind]

    weights_hash = [storage.sha256_bytes(state_dict_bytes(s)) for s in states]
    search_id = fingerprint(p.seed, p.merge, weights_hash, code_version())
    search_names = {method: f"merge-search-{method}-{search_id}" for method in p.merge.search}
    rows, searched = [], []
    run_state = run_state_uri(p) if p.merge.search else ""  # once: on a store it probes the store
    with ExitStack() as session:
        if any(cached_points(run_state, search_names[m], space) is None for m, space in p.merge.search.items()):
            session.enter_context(run_lock(run_state, f"merge-search-{search_id}", "merge"))
            session.enter_context(stage_ray(p))
        for method in p.merge.methods:
            entry = MERGE_METHODS.get(method, key="merge.methods")
            chosen = best_two if method == "slerp" else list(range(len(states)))  # SLERP: two models by definition
            members_in, method_base = [states[i] for i in chosen], base if entry.needs_base else None
            method_params = dict(p.merge.params.get(method, {}))
            supplied = {"score": val_score, "scores": own_scores} if entry.accepts("score") else {}
            supplied.update({kind: data_statistics(kind) for kind in ("fishers", "grams") if entry.accepts(kind)})
            if method in p.merge.search:
                points = search_merge_params(
                    method, members_in, method_base, {**method_params, **supplied}, p.merge.search[method], objective,
                    run_state, search_names[method],
                )
                best = best_point(points)
                method_params.update(best.params)
                searched += [{"method": method, "params": json.dumps(pt.params, sort_keys=True), "val_loss": pt.loss,
                              task.score_column: pt.score, "chosen": pt is best} for pt in points]
            started = time.perf_counter()
            with peak_rss_above_start() as memory:
                result = run_merge(method, members_in, method_base, **method_params, **supplied)
            seconds = time.perf_counter() - started
            members = [chosen[i] for i in result.members]
            path = storage.join(p.paths.merged, f"{method}.safetensors")
            storage.write_bytes(path, state_dict_bytes(result.state_dict))
            metrics = {f"{split}_{name}": value for split, data in (("val", val), ("test", test))
                       for name, value in score_state(card, result.state_dict, data.x, data.y, p.evaluate.batch_size,
                                                      p.evaluate.ece_bins, scale, bootstrap_seed(p.seed, split)).items()}
            rows.append({"method": method, "params": json.dumps(method_params, sort_keys=True),
                         "num_models": len(members), "members": ",".join(names[i] for i in members), **metrics,
                         "seconds": seconds, "peak_memory_mib": memory.mib, "checkpoint": path})
            print(f"merge: {method} done ({len(rows)}/{len(p.merge.methods)}): val {task.score} "
                  f"{metrics[f'val_{task.score}']:.4f}, {seconds:.2f}s", flush=True)
    merges = pd.DataFrame(rows)
    tables.write_table(merges, storage.join(p.paths.results, "merges.parquet"), tables.table_for("merges", card.task))
    search_table = pd.DataFrame(searched, columns=list(tables.table_for("merge_search", card.task).columns))
    tables.write_table(search_table, storage.join(p.paths.results, "merge_search.parquet"), tables.table_for("merge_search", card.task))

    a, b = (states[i] for i in best_two[:2]) if len(best_two) == 2 else (base, states[0])
    pair = [names[i] for i in best_two] if len(best_two) == 2 else ["base", names[0]]
    curve = interpolation_curve(card, a, b, {"val": (val.x, val.y), "test": (test.x, test.y)}, p.merge.interpolation_points)
    curve = name_endpoints(curve, pair)
    storage.write_text(storage.join(p.paths.plots, "interpolation.csv"), curve.to_csv(index=False))
    barriers = {f"{split}_loss_barrier": round(loss_barrier(curve["t"], curve[f"{split}_loss"]), 6) for split in ("val", "test")}
    storage.write_json(storage.join(p.paths.results, "interpolation.json"), {"interpolation": {"pair": pair, **barriers}})
    print(merges[["method", "num_models", f"val_{task.score}", f"test_{task.score}", "seconds", "peak_memory_mib"]].to_string(index=False))


if __name__ == "__main__":
    main()
