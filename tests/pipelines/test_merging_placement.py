"""Where the merge stage runs each method (:mod:`pipelines.merging.placement`), without Ray: the
decisions, their errors, and that a placed merge is the plain merge."""

import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.merging import MERGE_METHODS, merge
from pipelines.merging.placement import (
    IN_PROCESS_CPU, Placement, joins_cluster_for_gpu, merge_placed, place_methods, plan_placement,
)
from merge_models import adamerging_setup

NO_GPU = not torch.cuda.is_available()


def test_only_methods_that_run_passes_over_data_are_accelerated():
    accelerated = sorted(name for name in MERGE_METHODS.names() if MERGE_METHODS.get(name).accelerated)
    assert accelerated == ["adamerging"]  # PLeaS fits in float64 on the CPU: a GPU would idle


def test_use_gpu_false_keeps_everything_in_the_stage_on_the_cpu():
    placement = plan_placement(False, ray_connected=True)
    assert placement == Placement(False, "cpu", "merge.use_gpu is false")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_without_ray_or_gpu_auto_runs_here_and_true_names_the_key():
    assert plan_placement("auto", ray_connected=False).device == "cpu"
    with pytest.raises(ConfigError, match=r"merge.use_gpu is true, but this machine has no GPU"):
        plan_placement(True, ray_connected=False)


def test_the_stage_joins_a_cluster_for_gpus_only_when_one_is_configured(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not joins_cluster_for_gpu(["adamerging"], "auto", None)  # a local instance would only add start-up time
    assert joins_cluster_for_gpu(["adamerging"], "auto", "10.0.0.1:6379")
    assert not joins_cluster_for_gpu(["adamerging"], False, "10.0.0.1:6379")
    assert not joins_cluster_for_gpu([], True, "10.0.0.1:6379")
    # a job-mode address is never joined from here, and not even parsed when nothing needs it
    assert not joins_cluster_for_gpu([], "auto", "http://head:8265")


def test_the_placement_is_said_once_naming_the_methods():
    lines = []
    assert place_methods([], "auto", False, report=lines.append) is IN_PROCESS_CPU and lines == []
    place_methods(["adamerging"], False, True, report=lines.append)
    assert lines == ["mixpipe: merge.use_gpu: adamerging on the stage's process on cpu: merge.use_gpu is false"]


def test_a_placed_merge_is_the_plain_merge_and_says_where_it_ran():
    model, base, states, inputs = adamerging_setup()
    supplied = {"unlabelled_inputs": inputs, "model": model}
    options = {"steps": 5, "lr": 0.05, "seed": 2}
    # a "cuda" placement on a machine without one falls back to the CPU rather than failing
    placement = Placement(False, "cuda", "test")
    placed = merge_placed(placement, True, "adamerging", states, base, options, supplied)
    expected = merge("adamerging", states, base, **options, **supplied)
    assert placed.ran_on == ("stage cpu" if NO_GPU else "stage cuda")
    if NO_GPU:
        assert all(torch.equal(placed.result.state_dict[n], expected[n]) for n in base)
    assert placed.seconds > 0 and placed.peak_memory_mib >= 0
    # a method that is not accelerated stays on the CPU whatever the placement
    plain = merge_placed(placement, False, "uniform_soup", states, None, {}, {})
    assert plain.ran_on == "stage cpu"
