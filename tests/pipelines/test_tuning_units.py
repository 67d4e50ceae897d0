from pipelines.config import OptimParams
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard
from pipelines.training import TrainJob
from pipelines.tuning import grid, trial_job


def test_grid_is_the_ordered_product_with_stable_names():
    points = grid(["mixup", "cutmix"], [0.2, 1.0])
    assert [p.name for p in points] == ["t00-mixup-a0.2", "t01-mixup-a1", "t02-cutmix-a0.2", "t03-cutmix-a1"]
    assert [(p.method, p.alpha) for p in points] == [("mixup", 0.2), ("mixup", 1.0), ("cutmix", 0.2), ("cutmix", 1.0)]


def test_trial_jobs_differ_only_in_mixing_seed_and_name():
    template = TrainJob("tune-abc", ModelCard("cnn", (1, 8, 8), 10, 0), epochs=3, batch_size=16, optim=OptimParams(),
                        mixing=MixingSpec("none", 1.0, "elem", 0.5), seed=9, storage_path="/tmp/x", init_weights=b"w")
    first, second = (trial_job(template, p) for p in grid(["cutmix"], [0.4, 2.0]))
    assert first.run_name == "tune-abc-t00-cutmix-a0.4"
    assert first.mixing == MixingSpec("cutmix", 0.4, "elem", 0.5)
    assert first.seed != second.seed != template.seed
    assert (first.epochs, first.init_weights, first.storage_path) == (3, b"w", "/tmp/x")
