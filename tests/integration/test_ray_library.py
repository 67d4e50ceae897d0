"""The library's Ray paths against one local Ray instance shared by the module."""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.augmentation import build_shards, mix_shard, shard_seed
from pipelines.cluster import ray_session
from pipelines.config import OptimParams
from pipelines.errors import ClusterError, TrainingDiverged
from pipelines.data import contiguous_share, load_dataset, normalise, channel_stats, stratified_split
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard
from pipelines.training import TrainJob, run_training
from pipelines.tuning import grid, run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def other_instance():
    """Another local Ray instance on this machine, started and stopped by PID (cluster/'s launcher)."""
    from pipelines.cluster import launcher

    state = Path(tempfile.mkdtemp(prefix="mp-other-", dir="/tmp"))  # short: Ray's socket paths are limited
    # fixed ports outside the ephemeral range and Ray's worker ports (see test_cluster), apart from its own
    info = launcher.start(state, workers=0, cpus_per_node=1, base_port=26700)
    yield info
    launcher.stop(state)


@pytest.fixture(scope="module")
def ray_local():
    with ray_session(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp")) as connection:
        yield connection


@pytest.fixture(scope="module")
def splits():
    data = stratified_split(load_dataset("digits"), 0.15, 0.15, seed=0)
    mean, std = channel_stats(data.train)
    return normalise(data.train, mean, std), normalise(data.val, mean, std)


def job(storage, name, **changes):
    settings = dict(
        run_name=name, card=ModelCard("cnn", (1, 8, 8), 10, seed=1), epochs=2, batch_size=32,
        optim=OptimParams(lr=0.05, warmup_epochs=0), mixing=MixingSpec("mixup", alpha=0.4), seed=3,
        storage_path=str(storage), num_workers=2, cpus_per_worker=1.0, use_gpu="auto",
    )
    return TrainJob(**{**settings, **changes})


def test_local_instance_is_loopback_only_and_every_process_knows_its_address(ray_local, other_instance):
    import ray
    from ray.util.state import list_nodes

    assert ray_local.started_local and ray_local.cpus == 2 and ray_local.nodes == 1
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    assert ray_local.address != other_instance.address and os.environ["RAY_ADDRESS"] == ray_local.address

    @ray.remote(num_cpus=0)
    def nested_state_query() -> tuple[str | None, int]:
        # what Train V2's placement-group cleaner does: the state API without an address
        return os.environ.get("RAY_ADDRESS"), len(list_nodes())

    @ray.remote(num_cpus=0)
    def spawn() -> tuple[str | None, int]:
        return ray.get(nested_state_query.remote())  # a task's task inherits the job's environment

    assert ray.get(spawn.remote()) == (ray_local.address, 1)


def test_shard_tasks_read_their_rows_and_write_what_the_direct_path_writes(ray_local, splits, tmp_path):
    """Each task reads only its share of the stored split (here across part boundaries: parts of
    100 rows, shards of 420) and writes its shard itself."""
    from pipelines import storage
    from pipelines.data import write_split

    train, _ = splits
    stored = write_split(str(tmp_path / "train"), train, part_mib=100 * 64 * 4 / (1 << 20))
    assert stored.part_rows[:2] == [100, 100]
    spec = MixingSpec("cutmix", alpha=1.0)
    shards = build_shards(stored, spec, num_shards=3, seed=5, out=str(tmp_path / "shards"))
    assert [s.rows for s in shards] == [420, 420, 419]
    for i, shard in enumerate(shards):
        part = train.subset(np.arange(len(train))[contiguous_share(len(train), 3, i)])
        data = (tmp_path / "shards" / shard.file).read_bytes()
        assert shard.seed == shard_seed(5, "cutmix", i) and shard.sha256 == storage.sha256_bytes(data)
        assert data == mix_shard(part, spec, shard.seed)


def socket_owners() -> dict[str, str]:
    """Socket inode -> command line of the process holding it, for every process readable here."""
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[target[8:-1]] = cmdline
        except OSError:
            continue  # gone, or not ours to read
    return owners


def listening_sockets(owners: dict[str, str] | None = None) -> set[tuple[str, int, str]]:
    """(address, port, owner command line) of every TCP socket listening on this machine.

    ``owners`` caches inode owners between calls: the walk over every process's descriptors is
    redone only when a listener with an unknown inode appears (it costs far more than the tables,
    and sampling every 50 ms would otherwise take a core from the run being watched)."""
    import ipaddress

    owners = {} if owners is None else owners
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening.append((fields[1], fields[9]))
    if any(inode not in owners for _, inode in listening):
        owners.update(socket_owners())
    found = set()
    for local, inode in listening:
        hex_address, hex_port = local.split(":")
        raw = bytes.fromhex(hex_address)
        # /proc prints each 32-bit word in host (little-endian) order
        packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        address = ipaddress.ip_address(packed)
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        found.add((str(address), int(hex_port, 16), owners.get(inode, "?")))
    return found


# DDP without mixing, in float64: the equivalence test compares it with one worker at twice the
# batch, the fault drill with interrupted runs of the same job
DDP = {"mixing": MixingSpec("none"), "optim": OptimParams(lr=0.02, warmup_epochs=0), "precision": "float64",
       "batch_size": 16, "num_workers": 2}


@pytest.fixture(scope="module")
def ddp_run(ray_local, splits, tmp_path_factory):
    """The 2-worker DDP run, with every listening socket on the machine sampled while it trains."""
    train, val = splits
    seen, done, owners = set(), threading.Event(), {}

    def sample() -> None:
        while not done.is_set():
            seen.update(listening_sockets(owners))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcome = run_training(job(tmp_path_factory.mktemp("ddp"), "ddp2", **DDP), train, val)
    finally:
        done.set()
        sampler.join()
    return outcome, seen


def test_two_workers_at_b_match_one_worker_at_2b_and_listen_only_on_the_node_address(ddp_run, splits, tmp_path):
    """DDP equivalence, computed in float64: same seed, same data order, mixing off, so 2 workers at
    batch b and 1 worker at 2b differ only in the order the batch's gradient is summed.

    Tolerance: float64 rounding (u = 1.1e-16) is 2**29 times float32's; in float32 this comparison
    differed by up to 1.6e-5 relative after 2 epochs (rounding amplified ~270x by training), which
    in float64 scales to ~3e-14. 1e-10 leaves four orders of margin above that and is eight below a
    real sharding or averaging bug (~1e-2, e.g. a worker skipping half its batch).

    While the 2-worker run trains, every listening socket on the machine is sampled: the workers'
    (the torch rendezvous store, gloo's pairs) must be on the node's address, 127.0.0.1, never a
    wildcard.
    """
    train, val = splits
    two, seen = ddp_run
    one = run_training(job(tmp_path, "ddp1", **{**DDP, "batch_size": 32, "num_workers": 1}), train, val)
    assert [r["world_size"] for r in two.history] == [2, 2] and [r["world_size"] for r in one.history] == [1, 1]
    for a, b in zip(two.history, one.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10, abs=0)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-10, abs=0)
    for key, tensor in one.state_dict.items():
        assert tensor.dtype == torch.float64
        torch.testing.assert_close(two.state_dict[key], tensor, rtol=1e-10, atol=1e-12)

    workers = {(address, port) for address, port, owner in seen if "RayTrainWorker" in owner}
    assert workers, "no listening socket of a training worker was sampled"
    assert {address for address, _ in workers} == {"127.0.0.1"}
    assert {address for address, _, _ in seen} <= {"127.0.0.1", "::1"}, sorted(seen)


def test_an_infeasible_worker_group_fails_at_once_in_one_line(ray_local, splits, tmp_path):
    from pipelines.errors import ClusterError

    train, val = splits
    started = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        run_training(job(tmp_path, "huge", batch_size=4, num_workers=64), train, val)
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        "train.num_workers: 64 worker(s) x {CPU: 1} = {CPU: 64} does not fit: the cluster has {CPU: 2} on 1 node(s), "
        "room for 2 (lower the request, or on an autoscaling cluster set ray.resource_wait_s)"
    )


def test_the_autoscalers_ceiling_is_read_from_the_gcs_and_a_waiting_demand_stands_in_rays_queue(ray_local, capsys):
    """What an autoscaler publishes (its node types) decides ``use_gpu: auto`` on a cluster idling at
    zero GPU nodes; a demand waited for without a ceiling is a pending placement group meanwhile."""
    import ray
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from pipelines.cluster.resources import Demand, autoscaler_ceiling, pending_demand
    from pipelines.training.driver import cluster_worker_setup

    assert autoscaler_ceiling() is None  # a local instance: no autoscaler publishes node types
    published = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 2}, min_count=1, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="gpu-workers", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=4),
    ])
    key, namespace = GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    _internal_kv_put(key, published.SerializeToString(), overwrite=True, namespace=namespace)
    try:
        assert autoscaler_ceiling() == {"CPU": 34.0, "GPU": 4.0}
        plan, per_worker, backend = cluster_worker_setup(job("/tmp", "planned", num_workers=2))
    finally:
        _internal_kv_del(key, namespace=namespace)
    assert (plan.use_gpu, per_worker, backend) == (True, {"CPU": 1.0, "GPU": 1.0}, "nccl")
    assert capsys.readouterr().err == (
        "mixpipe: train.use_gpu: 2 worker(s) on GPU: the cluster has 0 GPU(s) up; its autoscaler's node types "
        "add up to 4, asked for 2\n"
    )

    def groups(state):
        return [g["bundles"] for g in ray.util.placement_group_table().values() if g["state"] == state]

    before = len(groups("REMOVED"))
    with pending_demand(Demand("train.num_workers: 2 worker(s)", {"CPU": 1.0, "GPU": 1.0}, 2)):
        assert groups("PENDING") == [{0: {"CPU": 1.0, "GPU": 1.0}, 1: {"CPU": 1.0, "GPU": 1.0}}]
    assert groups("PENDING") == [] and len(groups("REMOVED")) == before + 1


def test_a_worker_group_that_cannot_start_fails_with_the_reason(ray_local, splits, tmp_path, monkeypatch, capsys):
    """The request fits the cluster, but something else holds every CPU: Ray Train would retry the
    start forever; here it says once that it waits in Ray's queue, and fails after one start
    timeout, saying why and what is free."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from pipelines.errors import ClusterError

    train, val = splits
    hold = placement_group([{"CPU": 2}])  # all of the instance's CPUs, taken by someone else
    ray.get(hold.ready(), timeout=60)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3")
    try:
        started = time.monotonic()
        with pytest.raises(ClusterError) as caught:
            run_training(job(tmp_path, "blocked", num_workers=1), train, val)
        assert time.monotonic() - started < 60
    finally:
        remove_placement_group(hold)
    message = str(caught.value)
    assert message.startswith("train.num_workers: 1 worker(s) x {CPU: 1} = {CPU: 1}: the worker group did not start "
                              "within 3s (WorkerGroupStartupTimeoutError: ")
    assert message.endswith("; free now: {CPU: 0}") and "\n" not in message
    assert capsys.readouterr().err.count("waits in Ray's queue for resources other work holds (free now: {CPU: 0}); up to 3s") == 1


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_a_stopped_run_resumes_exactly(ddp_run, splits, tmp_path):
    """Fault drill: the rank-0 worker SIGKILLs itself after epoch 1 of 2.

    With ``max_failures=1`` Ray Train restarts the group from the last checkpoint; with 0 the run
    stops, and running it again under the same name resumes it. All randomness is derived from
    (seed, rank, epoch, step) and the optimizer state is checkpointed, so both end on exactly the
    weights of the uninterrupted run of the same job (so independent runs of a job are deterministic).
    """
    import ray.train

    train, val = splits
    full, _ = ddp_run
    killed = run_training(job(tmp_path, "killed", **DDP, max_failures=1, crash_after_epoch=1), train, val)
    epochs = [r["epoch"] for r in killed.history]
    attempts = [r["attempt"] for r in killed.history]
    assert epochs == [1, 2] and attempts[-1] == 1 and attempts == sorted(attempts)
    # resumed from epoch 1's checkpoint, or from the start if the kill came before Train registered it
    assert attempts.index(1) in (0, 1)
    with pytest.raises(ClusterError, match=r"^train: run stopped failed \(after 0 restart\(s\) allowed by train.max_failures\): ") as caught:
        run_training(job(tmp_path, "stopped", **DDP, max_failures=0, crash_after_epoch=1), train, val)
    assert "\n" not in str(caught.value)  # Ray's report of it was 133 lines
    assert isinstance(caught.value.__cause__, ray.train.TrainingFailedError)  # behind --verbose
    resumed = run_training(job(tmp_path, "stopped", **DDP, max_failures=0), train, val)
    assert [r["epoch"] for r in resumed.history] == [1, 2] and resumed.history[-1]["attempt"] == 1
    for outcome in (killed, resumed):
        for key, tensor in full.state_dict.items():
            assert torch.equal(tensor, outcome.state_dict[key]), key


def test_a_run_whose_loss_is_not_finite_stops_at_that_epoch_without_a_checkpoint_or_a_retry(ray_local, splits, tmp_path):
    train, val = splits
    diverging = job(tmp_path, "diverged", epochs=2, num_workers=1, max_failures=1, optim=OptimParams(lr=1e30, warmup_epochs=0))
    with pytest.raises(TrainingDiverged) as caught:
        run_training(diverging, train, val)
    assert str(caught.value).startswith("train: run diverged stopped at epoch 1: its loss is not finite (train_loss ")
    assert "; no checkpoint and no model is written. Lower train.optim.lr" in str(caught.value)
    run = tmp_path / "diverged"
    assert len(list((run / "mixpipe-attempts").iterdir())) == 1  # max_failures 1, yet not retried
    assert not [p for p in run.iterdir() if p.name.startswith("checkpoint")]


def test_manifold_mixup_with_rankmixup_trains_under_ddp(ray_local, splits, tmp_path):
    """Hidden-layer mixing and the clean+mixed forward of RankMixup under two DDP workers: one
    forward per backward, so DDP's gradient hooks fire once per parameter and step."""
    train, val = splits
    spec = MixingSpec("manifold_mixup", alpha=1.0, options=(("layers", ("input", "conv1", "pool")),),
                      loss="rankmixup", loss_options=(("weight", 0.5),))
    outcome = run_training(job(tmp_path, "manifold", mixing=spec), train, val)
    assert [r["world_size"] for r in outcome.history] == [2, 2]
    assert outcome.history[-1]["val_accuracy"] > 0.5


class _Planted:
    """Pickles to a call that leaves a marker file: what an attacker would plant as tuner.pkl."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "planted code ran"))


def test_sweep_halves_synchronously_keeps_checkpoints_and_never_unpickles_run_state(ray_local, splits, tmp_path):
    """Two trials, rungs at epochs 1 and 2, reduction 2: one goes on, ranked on the whole rung, and
    its second rung resumes its Train run from the first rung's checkpoint.

    Tune's restore would unpickle ``tuner.pkl`` from the run storage; pickles planted wherever Tune
    (old or new layout) keeps its experiment state must run nothing.
    """
    from pipelines.models import build_model
    from pipelines.models.checkpoints import state_dict_bytes
    from pipelines.tuning.sweep import ledger_file, read_rung_result, survivors

    train, val = splits
    base = build_model("cnn", (1, 8, 8), 10, seed=1).state_dict()  # what the trials fine-tune
    marker = tmp_path / "marker"
    for folder in ("sweep", "sweep/tune/rung-0", "sweep/tune/rung-1"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in ("tuner.pkl", "experiment_state-2026-01-01_00-00-00.json", "trainable.pkl"):
            (tmp_path / folder / name).write_bytes(pickle.dumps(_Planted(str(marker))))
    template = job(tmp_path, "sweep", num_workers=1, epochs=2, init_weights=state_dict_bytes(base))
    points = grid(["mixup", "cutmix"], [0.5])
    outcomes = run_sweep(template, points, train, val, experiment_name="sweep", grace_period=1,
                         reduction_factor=2, max_concurrent_trials=2)
    assert not marker.exists()
    assert [o.point for o in outcomes] == points
    sweep = str(tmp_path / "sweep")
    rung0 = [read_rung_result(ledger_file(sweep, p.name, 1)) for p in points]
    [kept] = survivors(rung0, 2)
    assert [o.epochs_run for o in outcomes] == [2 if p.name == kept else 1 for p in points]
    assert len(os.listdir(tmp_path / "sweep" / kept / "mixpipe-attempts")) == 2  # rung 2 resumed its Train run
    for outcome, first in zip(outcomes, rung0, strict=True):
        assert 0 <= outcome.val_score <= 1
        assert outcome.weights.keys() == base.keys()
        assert not all(torch.equal(outcome.weights[k], base[k]) for k in base)
        if outcome.point.name != kept:  # a stopped trial keeps its rung's checkpoint and score
            assert (outcome.val_score, outcome.val_loss) == (first.val_score, first.val_loss)
    # run again: everything comes from the ledger and the checkpoints, nothing trains
    started = time.monotonic()
    again = run_sweep(template, points, train, val, experiment_name="sweep", grace_period=1,
                      reduction_factor=2, max_concurrent_trials=2)
    assert time.monotonic() - started < 5
    assert [(o.point, o.epochs_run, o.val_score) for o in again] == [(o.point, o.epochs_run, o.val_score) for o in outcomes]
    assert all(torch.equal(a.weights[k], b.weights[k]) for a, b in zip(again, outcomes, strict=True) for k in a.weights)


def test_regression_trains_with_cmixup_under_ddp_and_reports_r2(ray_local, tmp_path):
    from pipelines.data import standardise_targets, target_stats

    data = stratified_split(load_dataset("diabetes"), 0.15, 0.15, seed=0)
    mean, std = channel_stats(data.train)
    target_mean, target_std = target_stats(data.train)
    train, val = (standardise_targets(normalise(s, mean, std), target_mean, target_std) for s in (data.train, data.val))
    card = ModelCard("mlp", (10, 1), 1, seed=1, task="regression")
    spec = MixingSpec("cmixup", alpha=1.0, options=(("bandwidth", 1.0),), loss="mse")
    outcome = run_training(
        job(tmp_path, "diabetes", card=card, mixing=spec, epochs=20, batch_size=16,
            optim=OptimParams(lr=0.01, warmup_epochs=0)), train, val,
    )
    history = outcome.history
    assert "val_accuracy" not in history[-1] and [r["world_size"] for r in history] == [2] * 20
    assert history[-1]["val_r2"] > 0.3 and history[-1]["val_loss"] < history[0]["val_loss"]
    # val_r2 is 1 - MSE / variance of the (standardised) validation targets
    assert history[-1]["val_r2"] == pytest.approx(1 - history[-1]["val_loss"] / float(np.var(val.y, dtype=np.float64)), rel=1e-6)
    with pytest.raises(Exception, match="'soft_ce' is a classification loss"):
        run_training(job(tmp_path, "wrong-loss", card=card, mixing=MixingSpec("mixup", alpha=1.0)), train, val)


def test_merge_search_evaluates_every_grid_point_with_ray_tune(ray_local, splits, tmp_path):
    from pipelines.evaluation import HeldOutObjective
    from pipelines.merging import merge
    from pipelines.models import build_model
    from pipelines.merging.search import best_point, cached_points, search_merge_params

    train, val = splits
    card = ModelCard("mlp", (1, 8, 8), 10, seed=1)
    base = build_model("mlp", (1, 8, 8), 10, seed=1).state_dict()
    states = [build_model("mlp", (1, 8, 8), 10, seed=s).state_dict() for s in (2, 3)]
    objective = HeldOutObjective(card, val.x, val.y)
    space = {"scale": [0.0, 0.5], "density": [0.2, 1.0]}
    points = search_merge_params("ties", states, base, {}, space, objective, str(tmp_path), "search")
    assert [p.params for p in points] == [{"density": 0.2, "scale": 0.0}, {"density": 0.2, "scale": 0.5},
                                          {"density": 1.0, "scale": 0.0}, {"density": 1.0, "scale": 0.5}]
    for point in points:  # what each Tune trial reported is the objective of that merge, recomputed here
        assert (point.score, point.loss) == pytest.approx(objective(merge("ties", states, base, **point.params)))
    assert (points[0].score, points[0].loss) == pytest.approx(objective(base))  # scale 0 is the base
    best = best_point(points)
    assert best.score == max(p.score for p in points)
    assert best.loss == min(p.loss for p in points if p.score == best.score)
    # the same search again (a merge stage re-run for an evaluate param) reads the finished one back
    started = time.monotonic()
    assert search_merge_params("ties", states, base, {}, space, objective, str(tmp_path), "search") == points
    assert time.monotonic() - started < 2  # no Tune run: a trial alone takes seconds
    assert cached_points(str(tmp_path), "search", {"scale": [0.5], "density": [0.2]}) is None  # another grid searches
