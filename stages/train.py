"""Train: the base model on Ray Train (DDP over ``train.num_workers`` workers) with mixing.

Usage:
    python -m stages.train

Reads ``seed``, ``train``, ``mixing`` and ``evaluate.batch_size`` (rows per validation forward). With ``mixing.source: online`` every batch is mixed in the
loop; with ``shards`` it trains on the augment stage's shards of ``mixing.method`` (checked against
their manifest) and mixes nothing itself. Writes ``<base_model>/{model.safetensors,card.json}``,
``<results>/train_history.parquet`` (``train_history`` table) and DVCLive metrics under
``<live>/train``. The Ray run is named from a hash of its params, data and code, so an interrupted
stage resumes and a changed one starts afresh.
"""

from __future__ import annotations

from dataclasses import replace

from dvclive import Live

from pipelines import storage, tables
from pipelines.config import fingerprint
from pipelines.data import read_prepared, read_shards
from pipelines.locks import run_lock
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard, save_checkpoint
from pipelines.seeding import derive_seed
from pipelines.tasks import get_task
from pipelines.training import TrainJob, history_frame, run_training
from stages.common import code_version, entrypoint, params, run_state_uri, stage_ray

@entrypoint("train", uses_ray=True)
def main(argv: list[str]) -> None:
    p = params("data", "mixing", "train")
    train = read_prepared(p.paths.prepared, "train")
    val = read_prepared(p.paths.prepared, "val")
    data_hash = [storage.sha256_file(storage.join(p.paths.prepared, f"{s}.parquet")) for s in ("train", "val")]
    if p.mixing.source == "shards":
        shards = storage.join(p.paths.shards, p.mixing.method)
        train = read_shards(shards)
        data_hash.append(storage.sha256_file(storage.join(shards, "manifest.json")))
    card = ModelCard(p.train.model, train.input_shape, train.num_classes, seed=derive_seed(p.seed, "init"), task=train.task)
    score = get_task(train.task).score_column
    job = TrainJob(
        run_name=f"train-{fingerprint(p.seed, p.train, p.mixing, p.evaluate.batch_size, data_hash, code_version())}",
        card=card,
        epochs=p.train.epochs,
        batch_size=p.train.batch_size,
        optim=p.train.optim,
        mixing=MixingSpec.from_params(p.mixing),
        seed=derive_seed(p.seed, "train"),
        storage_path=run_state_uri(p),
        num_workers=p.train.num_workers,
        cpus_per_worker=p.train.cpus_per_worker,
        use_gpu=p.train.use_gpu,
        max_failures=p.train.max_failures,
        val_batch_size=p.evaluate.batch_size,
        deterministic=p.train.deterministic,
    )
    with run_lock(job.storage_path, job.run_name, "train"), stage_ray(p) as connection:
        outcome = run_training(replace(job, **connection.waits(p.ray)), train, val)

    last = outcome.history[-1]
    info = {"run": job.run_name, "epochs": last["epoch"], score: last[score],
            "mixing": p.mixing.method, "mixing_source": p.mixing.source, "loss": p.mixing.loss}
    save_checkpoint(p.paths.base_model, outcome.state_dict, replace(card, info=info))
    history = history_frame(outcome.history, train.task)
    tables.write_table(history, storage.join(p.paths.results, "train_history.parquet"), tables.table_for("train_history", train.task))
    with Live(storage.join(p.paths.live, "train"), dvcyaml=None, save_dvc_exp=False) as live:
        for record in outcome.history:
            live.step = int(record["epoch"])
            for name in ("train_loss", "val_loss", score, "lr", "samples_per_s"):
                live.log_metric(name, float(record[name]))
    print(f"train: {job.run_name}: {last['epoch']} epochs, {score} {last[score]:.4f}")


if __name__ == "__main__":
    main()
