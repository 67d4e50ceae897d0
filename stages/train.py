"""Train: the base model on Ray Train (DDP over ``train.num_workers`` workers) with mixing.

Usage:
    python -m stages.train

Reads ``seed``, ``train``, ``mixing``, ``input`` and ``evaluate.batch_size`` (rows per validation
forward). With ``mixing.source: online`` every batch is mixed in the loop, and the splits are held
in memory or streamed through Ray Data as ``input.mode`` decides; with ``shards`` it trains on the
augment stage's shards of ``mixing.method`` (checked against their manifest, in memory) and mixes
nothing itself. Writes ``<base_model>/{model.safetensors,card.json}``,
``<results>/train_history.parquet`` (``train_history`` table) and DVCLive metrics under
``<live>/train``. The Ray run is named from a hash of its params, data and code, so an interrupted
stage resumes and a changed one starts afresh.
"""

from __future__ import annotations

from dataclasses import replace

from dvclive import Live

from pipelines import storage, tables
from pipelines.config import fingerprint
from pipelines.data import read_shards
from pipelines.errors import ConfigError
from pipelines.locks import run_lock
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard, save_checkpoint
from pipelines.seeding import derive_seed
from pipelines.tasks import get_task
from pipelines.training import TrainJob, history_frame, run_training
from pipelines.training.input_plan import training_data
from stages.common import code_version, entrypoint, params, run_state_uri, stage_ray

@entrypoint("train", uses_ray=True)
def main(argv: list[str]) -> None:
    p = params("data", "mixing", "train")
    offline = p.mixing.source == "shards"
    if offline and p.input.mode == "stream":
        raise ConfigError("input.mode: stream reads the prepared splits; mixing.source: shards trains on the augment "
                          "stage's shards, which are read into memory (set input.mode: auto or memory)")
    data = training_data(p, "train", memory=offline)
    data_hash = list(data.fingerprints)
    train, fields = data.train, data.job_fields(p)
    if offline:
        shards = storage.join(p.paths.shards, p.mixing.method)
        train = read_shards(shards)
        data_hash.append(storage.sha256_file(storage.join(shards, "manifest.json")))
        fields = {**fields, "part_rows": None, "window_rows": None}  # the shards are one part, one window
    card = ModelCard(p.train.model, train.input_shape, train.num_classes, seed=derive_seed(p.seed, "init"), task=train.task)
    score = get_task(train.task).score_column
    job = TrainJob(
        run_name=f"train-{fingerprint(p.seed, p.train, p.mixing, p.input, p.evaluate.batch_size, data_hash, code_version())}",
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
        **fields,
    )
    with run_lock(job.storage_path, job.run_name, "train"), stage_ray(p) as connection:
        data = data.reachable(p, connection)
        outcome = run_training(replace(job, **connection.waits(p.ray)), train if offline else data.train, data.val)

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
