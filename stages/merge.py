"""Merge: combine the tune stage's fine-tunes (optionally with the base) with each method in ``merge.methods``.

Usage:
    python -m stages.merge

Reads ``merge``; writes ``<merged>/<method>.safetensors`` (the base model's architecture, see its
card) and ``<results>/merges.parquet`` (``merges`` table). ``merge.params.<method>`` holds a
method's parameters (``density``, ``scale``...). Task-vector methods take the base model as the
shared initialisation; SLERP merges the two models with the best validation accuracy; greedy
soup scores candidates by validation accuracy; Fisher merging and RegMean get each model's
diagonal Fisher / linear-input Gram matrices on the validation split (Fisher labels are sampled
from a generator seeded by ``seed``).
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from pipelines import storage, tables
from pipelines.data import read_prepared
from pipelines.evaluation import score_state
from pipelines.merging import MERGE_METHODS, run_merge
from pipelines.merging.statistics import diagonal_fisher, linear_input_grams
from pipelines.models import load_card, load_state_dict, model_from_state
from pipelines.models.checkpoints import state_dict_bytes
from pipelines.seeding import derive_seed, torch_generator
from stages.common import entrypoint, params


@entrypoint("merge")
def main(argv: list[str]) -> None:
    p = params()
    val = read_prepared(p.paths.prepared, "val")
    card = load_card(p.paths.base_model)
    trials = tables.read_table(storage.join(p.paths.results, "trials.parquet"), tables.TRIALS)
    names = list(trials["trial"])
    states = [load_state_dict(path) for path in trials["checkpoint"]]
    base = load_state_dict(p.paths.base_model)
    if p.merge.include_base:
        names.append("base")
        states.append(base)

    def val_accuracy(state):
        return score_state(card, state, val.x, val.y)["accuracy"]

    own_scores = [val_accuracy(s) for s in states]
    statistics: dict[str, list] = {}

    def data_statistics(kind: str) -> list:
        """Fisher diagonals or linear-input Grams of every model on the validation split, once."""
        if kind not in statistics:
            x = torch.tensor(val.x)
            models = [model_from_state(card, s) for s in states]
            if kind == "fishers":
                statistics[kind] = [diagonal_fisher(m, x, torch_generator(derive_seed(p.seed, "fisher", i)))
                                    for i, m in enumerate(models)]
            else:
                statistics[kind] = [linear_input_grams(m, x) for m in models]
        return statistics[kind]

    rows = []
    for method in p.merge.methods:
        entry = MERGE_METHODS.get(method, key="merge.methods")
        extra = dict(p.merge.params.get(method, {}))
        if entry.accepts("score"):
            extra.update(score=val_accuracy, scores=own_scores)
        for kind in ("fishers", "grams"):
            if entry.accepts(kind):
                extra[kind] = data_statistics(kind)
        chosen = list(range(len(states)))
        if method == "slerp":  # two models by definition: the two best on validation
            chosen = sorted(chosen, key=lambda i: (-own_scores[i], i))[:2]
        started = time.perf_counter()
        result = run_merge(method, [states[i] for i in chosen], base if entry.needs_base else None, **extra)
        members = [chosen[i] for i in result.members]
        seconds = time.perf_counter() - started
        path = storage.join(p.paths.merged, f"{method}.safetensors")
        storage.write_bytes(path, state_dict_bytes(result.state_dict))
        scores = score_state(card, result.state_dict, val.x, val.y)
        rows.append({"method": method, "num_models": len(members), "members": ",".join(names[i] for i in members),
                     "val_loss": scores["nll"], "val_accuracy": scores["accuracy"], "seconds": seconds, "checkpoint": path})
    merges = pd.DataFrame(rows)
    tables.write_table(merges, storage.join(p.paths.results, "merges.parquet"), tables.MERGES)
    print(merges[["method", "num_models", "val_accuracy"]].to_string(index=False))


if __name__ == "__main__":
    main()
