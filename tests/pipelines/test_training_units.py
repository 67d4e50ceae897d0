"""The training pieces that need no Ray: batching, schedules, optimizer state, GPU choice."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.config import OptimParams
from pipelines.data import ArrayDataset
from pipelines.errors import ConfigError, DataError
from pipelines.models import ModelCard, build_model
from pipelines.mixing import MixingSpec
from pipelines.training import TrainJob, plan_devices
from pipelines.training.batching import mixing_seed, rank_batches, steps_per_epoch
from pipelines.training.driver import check_fits, history_frame
from pipelines.training.optim import build_optimizer, lr_at_epoch
from pipelines.training.state import TrainState, load_train_state, save_train_state


def test_two_ranks_at_b_see_exactly_one_rank_at_2b():
    one = rank_batches(101, 8, 1, 0, seed=5, epoch=3)
    two = [rank_batches(101, 4, 2, r, seed=5, epoch=3) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 101 // 8
    for step, big in enumerate(one):
        assert torch.equal(torch.cat([two[0][step], two[1][step]]), big)


def test_two_ranks_at_b_see_one_rank_at_2b_over_parts_and_windows():
    parts, window = [40, 40, 40, 21], 33
    one = rank_batches(141, 8, 1, 0, seed=5, epoch=2, part_rows=parts, window_rows=window)
    two = [rank_batches(141, 4, 2, r, seed=5, epoch=2, part_rows=parts, window_rows=window) for r in range(2)]
    for step, big in enumerate(one):
        assert torch.equal(torch.cat([two[0][step], two[1][step]]), big)


def test_an_epoch_reads_whole_parts_in_a_seeded_order_and_shuffles_only_within_windows():
    """What makes the order streamable: the stream is whole parts one after another, and each
    window of the order holds exactly the stream's rows at those positions."""
    import numpy as np

    from pipelines.seeding import derive_seed, torch_generator
    from pipelines.training.batching import epoch_plan

    parts, window = [40, 40, 40, 21], 33
    offsets = np.cumsum([0, *parts])
    plans = [epoch_plan(parts, window, seed=9, epoch=e) for e in range(4)]
    for plan in plans:
        assert sorted(plan.part_order) == [0, 1, 2, 3]
        assert plan.stream.tolist() == [r for p in plan.part_order for r in range(offsets[p], offsets[p + 1])]
        order = plan.order
        assert sorted(order.tolist()) == list(range(141))
        for start in range(0, 141, window):
            assert sorted(order[start : start + window].tolist()) == sorted(plan.stream[start : start + window].tolist())
    assert len({plan.part_order for plan in plans}) > 1 and len({tuple(plan.order) for plan in plans}) == 4
    # a split within one window is one permutation of all its rows: the order every split had
    # before parts and windows, so small datasets train exactly as they did
    whole = epoch_plan([141], 1000, seed=9, epoch=3).order
    assert whole.tolist() == torch.randperm(141, generator=torch_generator(derive_seed(9, "epoch-order", 3))).tolist()


def test_batches_are_disjoint_seeded_and_change_per_epoch():
    ranks = [rank_batches(100, 10, 3, r, seed=1, epoch=0) for r in range(3)]
    seen = torch.cat([torch.cat(b) for b in ranks])
    assert seen.unique().numel() == seen.numel() == 90  # 100 // 30 = 3 steps x 30
    assert all(torch.equal(a, b) for a, b in zip(ranks[0], rank_batches(100, 10, 3, 0, seed=1, epoch=0), strict=True))
    assert not torch.equal(ranks[0][0], rank_batches(100, 10, 3, 0, seed=1, epoch=1)[0])
    with pytest.raises(ValueError, match="do not fill"):
        rank_batches(10, 8, 2, 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="rank 2"):
        rank_batches(10, 1, 2, 2, seed=0, epoch=0)
    assert steps_per_epoch(1259, 32, 2) == 19


def test_lr_schedule_values():
    cosine = OptimParams(lr=0.1, schedule="cosine", warmup_epochs=2)
    assert [round(lr_at_epoch(cosine, e, 6), 6) for e in range(6)] == [
        round(0.1 / 3, 6),
        round(0.2 / 3, 6),
        0.1,
        round(0.05 * (1 + math.cos(math.pi / 4)), 6),
        0.05,
        round(0.05 * (1 + math.cos(3 * math.pi / 4)), 6),
    ]
    constant = OptimParams(lr=0.1, schedule="constant")
    assert {lr_at_epoch(constant, e, 4) for e in range(4)} == {0.1}
    step = OptimParams(lr=0.1, schedule="step", warmup_epochs=1, step_epochs=2, step_gamma=0.5)
    assert [lr_at_epoch(step, e, 6) for e in range(6)] == [0.05, 0.1, 0.1, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizer_state_survives_a_checkpoint_exactly(tmp_path, optimizer):
    card = ModelCard("mlp", (1, 4, 4), 3, seed=0)
    settings = OptimParams(optimizer=optimizer, lr=0.1)
    x, y = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3

    def step(model, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model = build_model("mlp", card.input_shape, 3, 0)
    opt = build_optimizer(model.parameters(), settings)
    step(model, opt)
    save_train_state(tmp_path, model.state_dict(), card, opt, TrainState(1, [{"epoch": 1}], 0))
    step(model, opt)  # the uninterrupted second step

    saved = load_train_state(tmp_path)
    assert saved.progress == TrainState(1, [{"epoch": 1}], 0) and saved.card == card
    resumed = build_model("mlp", card.input_shape, 3, 0)
    resumed.load_state_dict(saved.weights)
    resumed_opt = build_optimizer(resumed.parameters(), settings)
    resumed_opt.load_state_dict(saved.optimizer_state)
    step(resumed, resumed_opt)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not any(p.suffix == ".pkl" or p.suffix == ".pt" for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("setting", "up", "ceiling", "expected"),
    [
        ("auto", 0, None, False), ("auto", 2, None, True), ("auto", 1, None, False), (False, 8, None, False),
        (True, 4, None, True), (True, 0, None, True),  # true without a ceiling: asks, and waits resource_wait_s
        # an autoscaling cluster idling at zero GPU nodes: its node types decide, not the nodes up
        ("auto", 0, {"CPU": 64.0, "GPU": 4.0}, True), ("auto", 0, {"CPU": 64.0, "GPU": 1.0}, False),
        ("auto", 0, {"CPU": 64.0}, False), (False, 0, {"GPU": 8.0}, False),
    ],
)
def test_device_plan_counts_what_the_cluster_can_add(setting, up, ceiling, expected):
    assert plan_devices(setting, 2, up, ceiling).use_gpu is expected


def test_device_plan_says_which_and_why_in_one_line():
    lines = {
        "up": plan_devices("auto", 2, 2, None).line("train.use_gpu", 2),
        "grows": plan_devices("auto", 2, 0, {"GPU": 4.0}).line("tune.use_gpu", 2),
        "unknown": plan_devices("auto", 2, 0, None).line("train.use_gpu", 2),
        "off": plan_devices(False, 2, 8, None).line("train.use_gpu", 2),
    }
    assert lines == {
        "up": "mixpipe: train.use_gpu: 2 worker(s) on GPU: the cluster has 2 GPU(s) up",
        "grows": "mixpipe: tune.use_gpu: 2 worker(s) on GPU: the cluster has 0 GPU(s) up; its autoscaler's node "
                 "types add up to 4, asked for 2",
        "unknown": "mixpipe: train.use_gpu: 2 worker(s) on CPU: the cluster has 0 GPU(s) up and no autoscaler "
                   "publishes node types with GPUs (train.use_gpu: true waits ray.resource_wait_s for them)",
        "off": "mixpipe: train.use_gpu: 2 worker(s) on CPU: train.use_gpu is false",
    }


@pytest.mark.parametrize(
    ("setting", "gpus", "expected"),
    [
        ("auto", 0, (False, {"CPU": 1.5}, "gloo")),
        ("auto", 2, (True, {"CPU": 1.5, "GPU": 1.0}, "nccl")),
        (False, 8, (False, {"CPU": 1.5}, "gloo")),
        (True, 2, (True, {"CPU": 1.5, "GPU": 1.0}, "nccl")),
    ],
)
def test_worker_setup_picks_resources_and_backend(setting, gpus, expected):
    from pipelines.training.driver import worker_setup

    job = TrainJob("r", ModelCard("mlp", (1, 2, 2), 2, 0), epochs=1, batch_size=4, optim=OptimParams(),
                   mixing=MixingSpec(), seed=0, storage_path="/tmp", num_workers=2, cpus_per_worker=1.5, use_gpu=setting)
    plan, resources, backend = worker_setup(job, gpus)
    assert (plan.use_gpu, resources, backend) == expected


def test_use_gpu_true_beyond_the_autoscalers_ceiling_names_the_key():
    with pytest.raises(ConfigError, match=r"^tune.use_gpu is true but the cluster has 1 GPU\(s\) up and its autoscaler's "
                                          r"node types add up to at most 1, for 2 worker\(s\)$"):
        plan_devices(True, 2, 1, {"GPU": 1.0}, key="tune.use_gpu")


def test_job_must_fit_one_global_batch():
    job = TrainJob("r", ModelCard("mlp", (1, 2, 2), 2, 0), epochs=1, batch_size=8, optim=OptimParams(),
                   mixing=MixingSpec(), seed=0, storage_path="/tmp", num_workers=2)
    small = ArrayDataset(torch.zeros(15, 1, 2, 2).numpy(), torch.zeros(15, dtype=torch.int64).numpy(), torch.arange(15).numpy(), 2)
    with pytest.raises(DataError, match="15 training samples do not fill one global batch of 8 x 2"):
        check_fits(job, small)


def test_history_frame_validates():
    record = {"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5, "lr": 0.1,
              "samples_per_s": 100.0, "epoch_seconds": 1.0, "world_size": 2, "attempt": 0}
    frame = history_frame([record, {**record, "epoch": 2}])
    assert frame["epoch"].tolist() == [1, 2]
    with pytest.raises(DataError):
        history_frame([record, record])  # an epoch twice


def test_ranks_and_steps_draw_different_mixing():
    from pipelines.mixing import get_mixer
    from pipelines.seeding import torch_generator

    mixer = get_mixer("mixup", alpha=1.0)
    x, y = torch.randn(16, 1, 4, 4), torch.arange(16) % 4

    def draw(rank, epoch, step):
        return mixer(x, y, generator=torch_generator(mixing_seed(7, rank, epoch, step)))

    base = draw(0, 0, 0)
    for other in (draw(1, 0, 0), draw(0, 0, 1), draw(0, 1, 0)):
        assert not torch.equal(base.lam, other.lam) and not torch.equal(base.index, other.index)
    assert torch.equal(draw(1, 2, 3).lam, draw(1, 2, 3).lam)


def test_manifold_layers_the_model_lacks_fail_before_training():
    spec = MixingSpec("manifold_mixup", options=(("layers", ("input", "conv1")),))
    job = TrainJob("r", ModelCard("mlp", (1, 2, 2), 2, 0), epochs=1, batch_size=4, optim=OptimParams(),
                   mixing=spec, seed=0, storage_path="/tmp")
    data = ArrayDataset(torch.zeros(8, 1, 2, 2).numpy(), torch.zeros(8, dtype=torch.int64).numpy(), torch.arange(8).numpy(), 2)
    with pytest.raises(ConfigError, match=r"mixing.options.manifold_mixup.layers: model 'mlp' has no mix point\(s\) \['conv1'\]"):
        check_fits(job, data)


def step_mixing(spec, **pairs):
    from pipelines.training.loop import StepMixing

    return StepMixing(spec.build(), spec.build_loss(), num_classes=4, smoothing=spec.label_smoothing, **pairs)


def test_offline_pairs_train_on_the_recorded_labels_and_lambda():
    from pipelines.mixing import pair_targets, soft_target_cross_entropy
    from pipelines.seeding import torch_generator

    model = build_model("mlp", (1, 3, 3), 4, seed=1)
    x, y = torch.randn(10, 1, 3, 3, generator=torch_generator(0)), torch.arange(10) % 4
    y_partner, lam = (torch.arange(10) + 1) % 4, torch.linspace(0.1, 1.0, 10)
    rows = torch.tensor([7, 2, 5])
    mixing = step_mixing(MixingSpec("cutmix", label_smoothing=0.1), y_partner=y_partner, lam=lam)
    loss = mixing.batch_loss(model, x[rows], y[rows], rows, torch_generator(3), use_amp=False)
    expected = soft_target_cross_entropy(model(x[rows]), pair_targets(y[rows], y_partner[rows], lam[rows], 4, 0.1))
    assert torch.equal(loss, expected)  # the shard's inputs as they are: cutmix is not applied again


@pytest.mark.parametrize("layers", [("input",), ("hidden2",)])
def test_rankmixup_runs_one_forward_and_keeps_the_clean_half_clean(layers):
    from pipelines.mixing import mixing_hidden, mixup_ranking_loss
    from pipelines.models import mix_points
    from pipelines.seeding import torch_generator

    # float64: one forward over [mixed; clean] and two separate ones differ only in float64 rounding
    model = build_model("mlp", (1, 3, 3), 4, seed=1).double()
    spec = MixingSpec("manifold_mixup", alpha=1.0, options=(("layers", layers),), loss="rankmixup",
                      loss_options=(("margin", 0.05), ("weight", 0.7)))
    x, y = torch.randn(12, 1, 3, 3, generator=torch_generator(0), dtype=torch.float64), torch.arange(12) % 4
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    loss = step_mixing(spec).batch_loss(model, x, y, torch.arange(12), torch_generator(5), use_amp=False)
    handle.remove()
    assert calls == [24]  # mixed and clean in one forward
    out = spec.build()(x, y, generator=torch_generator(5))
    with torch.no_grad(), mixing_hidden(mix_points(model), out):
        mixed_logits = model(out.x)
    clean_logits = model(x)
    expected = F.cross_entropy(clean_logits, y) + 0.7 * mixup_ranking_loss(mixed_logits, clean_logits, 0.05)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)


def test_validation_in_batches_sums_to_the_one_pass_numbers():
    """Batches only regroup the sums: in float64, the loss sum of 7-row batches and of one pass
    differ by summation order alone (each of ~300 terms below 20 in size, float64 eps 1.1e-16:
    a bound of 300 * 20 * 1.1e-16 < 1e-12 on the sum), and the count of correct rows is exact."""
    from pipelines.tasks import CLASSIFICATION
    from pipelines.training.inputs import MemoryInput
    from pipelines.training.loop import validate

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(301, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (301,), generator=generator)
    data = MemoryInput(x, y, None, "float64")
    model = build_model("cnn", (1, 8, 8), 10, seed=3).double()
    for rank in range(2):
        batched = validate(model, data.val_batches(2, rank, 7), CLASSIFICATION)
        whole = validate(model, data.val_batches(2, rank, 10_000), CLASSIFICATION)
        assert batched[1:] == whole[1:] and whole[2] == (151 if rank == 0 else 150)
        assert batched[0] == pytest.approx(whole[0], rel=0, abs=1e-12)


def test_arrays_reach_the_device_as_stored_and_batches_in_the_runs_precision():
    import numpy as np

    from pipelines.data import Normalisation
    from pipelines.training.inputs import ready, to_device

    frozen = np.arange(6, dtype=np.uint8).reshape(3, 2, 1)
    frozen.flags.writeable = False  # as they come from Ray's object store
    tensor = to_device(frozen, torch.device("cpu"))
    assert tensor.dtype == torch.uint8 and tensor.tolist() == frozen.tolist()  # a quarter of float32's bytes
    labels = to_device(np.array([3, 1], dtype=np.int64), torch.device("cpu"))
    assert labels.dtype == torch.int64  # labels keep their integer type
    stats = Normalisation((1.0, 2.0), (2.0, 4.0))
    # normalised in float64, rounded once to float32, then held in the run's precision
    assert ready(tensor, stats, "float32").dtype == torch.float32
    assert ready(tensor, stats, "float64")[1, :, 0].tolist() == [(2 - 1) / 2, (3 - 2) / 4]
    assert ready(tensor, None, "float64").dtype == torch.float64


def test_the_deterministic_switch_sets_pytorchs_flags_and_the_cublas_workspace(monkeypatch):
    from pipelines.training.determinism import CUBLAS_WORKSPACE, use_deterministic_kernels

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_kernels(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        # every mixer and loss runs under it here (CPU); on CUDA benchmarks/gpu_check.py does the same
        from pipelines.mixing import MIXERS

        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(8) % 4
        for name in MIXERS.names():
            mixer = MixingSpec(name, alpha=1.0).build()
            if not mixer.mixes_hidden and getattr(mixer, "task", "classification") == "classification":
                mixer(x.clone(), labels, generator=torch.Generator().manual_seed(2))
    finally:
        use_deterministic_kernels(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
