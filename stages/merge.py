"""Merge: combine the tune stage's fine-tunes (optionally with the base) with each method in ``merge.methods``.

Usage:
    python -m stages.merge

Reads ``seed``, ``merge``, ``evaluate`` and ``ray``. Each method merges what its registry row declares
(:mod:`pipelines.merging.run`): task-vector methods take the base model as the shared
initialisation, SLERP the two models best on validation; greedy soup scores candidates on
validation; Fisher merging and RegMean get each model's diagonal Fisher / linear-input Grams on the
validation split (Fisher labels sampled from a generator seeded by ``seed``); LiNeS each
parameter's layer depth; AdaMerging and PLeaS the test split's inputs, and AdaMerging a GPU where
``merge.use_gpu`` finds one (a Ray task of its own on a cluster, :mod:`pipelines.merging.placement`).
``merge.search.<method>`` lists candidate values of its parameters: Ray Tune merges at every grid
point and the best on validation is kept. Writes ``<merged>/<method>.safetensors``,
``<results>/merges.parquet`` (``merges``: params, val/test metrics, seconds, peak memory, where it
ran) and ``<results>/merge_search.parquet``.
"""

from __future__ import annotations

from contextlib import ExitStack

import pandas as pd

from pipelines import storage, tables
from pipelines.config import Params, fingerprint
from pipelines.data import read_prepared
from pipelines.locks import run_lock
from pipelines.merging.placement import joins_cluster_for_gpu, may_use_gpu, place_methods
from pipelines.merging.run import MergeInputs, accelerated_methods, merge_all, needs_ray
from pipelines.models import load_card, load_state_dict
from pipelines.models.checkpoints import state_dict_bytes
from pipelines.tasks import get_task
from stages.common import code_version, entrypoint, params, run_state_uri, stage_ray, target_scale


def uses_ray(p: Params) -> bool:
    """A search, or a method that may want a cluster's GPU (job mode then runs the stage as a job)."""
    return bool(p.merge.search) or may_use_gpu(accelerated_methods(p.merge), p.merge.use_gpu)


@entrypoint("merge", uses_ray=uses_ray)
def main(argv: list[str]) -> None:
    p = params("merge")
    card = load_card(p.paths.base_model)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.table_for("trials", card.task))
    names, states = list(trials["trial"]), [load_state_dict(path) for path in trials["checkpoint"]]
    base = load_state_dict(p.paths.base_model)
    if p.merge.include_base:
        names.append("base")
        states.append(base)
    inputs = MergeInputs(card, names, states, base, read_prepared(p.paths.prepared, "val"),
                         read_prepared(p.paths.prepared, "test"), p.seed, p.evaluate.batch_size, p.evaluate.ece_bins,
                         target_scale(p.paths.prepared, card.task))
    weights_hash = [storage.sha256_bytes(state_dict_bytes(s)) for s in states]
    search_id = fingerprint(p.seed, p.merge, weights_hash, code_version())
    run_state = run_state_uri(p) if p.merge.search else ""  # once: on a store it probes the store
    accelerated = accelerated_methods(p.merge)
    with ExitStack() as session:
        searching = needs_ray(p.merge, run_state, search_id)
        if searching:
            session.enter_context(run_lock(run_state, f"merge-search-{search_id}", "merge"))
        joined = searching or joins_cluster_for_gpu(accelerated, p.merge.use_gpu, p.ray.address)
        if joined:
            session.enter_context(stage_ray(p))
        placement = place_methods(accelerated, p.merge.use_gpu, joined, p.ray.resource_wait_s)
        outcome = merge_all(inputs, p.merge, run_state, search_id, p.paths.merged, lambda line: print(line, flush=True),
                            placement)
    merges = pd.DataFrame(outcome.merges)
    tables.write_table(merges, storage.join(p.paths.results, "merges.parquet"), tables.table_for("merges", card.task))
    search_spec = tables.table_for("merge_search", card.task)
    search_table = pd.DataFrame(outcome.searched, columns=list(search_spec.columns))
    tables.write_table(search_table, storage.join(p.paths.results, "merge_search.parquet"), search_spec)
    task = get_task(card.task)
    print(merges[["method", "num_models", f"val_{task.score}", f"test_{task.score}", "seconds", "peak_memory_mib", "ran_on"]].to_string(index=False))


if __name__ == "__main__":
    main()
