"""An accelerated merge method on a Ray task of its own, holding the GPU of a local instance that
declares one (this machine may have none: the task then runs on its CPU, which is what lets CI
check the scheduling and the round trip through the object store)."""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch

from pipelines.cluster import ray_session
from pipelines.merging.placement import merge_placed, merge_timed, plan_placement
from merge_models import adamerging_setup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    with ray_session(num_cpus=2, num_gpus=1, temp_dir=tempfile.mkdtemp(prefix="mp-place-", dir="/tmp")) as connection:
        yield connection


def test_auto_puts_adamerging_on_a_ray_task_with_the_gpu_and_it_merges_as_here(ray_with_a_gpu):
    import ray

    placement = plan_placement("auto", ray_connected=True)
    assert placement.on_worker and placement.device == "cuda"
    assert placement.reason == "the cluster has 1 GPU(s) up"
    model, base, states, inputs = adamerging_setup()
    supplied = {"unlabelled_inputs": inputs, "model": model}
    options = {"steps": 8, "lr": 0.05, "seed": 3}
    placed = merge_placed(placement, True, "adamerging", states, base, options, supplied)
    gpu = torch.cuda.is_available()
    assert placed.ran_on == ("ray task cuda" if gpu else "ray task cpu")
    deadline = time.monotonic() + 30  # the resource view is updated asynchronously
    while ray.available_resources().get("GPU") != 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU") == 1.0  # the task gave its GPU back
    if not gpu:
        # a Ray task with one CPU runs torch on one thread: the same here gives the same bits
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            here = merge_timed("adamerging", states, base, options, supplied, "cpu")
        finally:
            torch.set_num_threads(threads)
        assert here.ran_on == "stage cpu"
        assert all(torch.equal(placed.result.state_dict[n], here.result.state_dict[n]) for n in base)
    assert placed.result.members == [0, 1, 2] and placed.seconds > 0
    assert os.environ.get("RAY_ADDRESS") == ray_with_a_gpu.address
