"""The four merge edge cases where the library disagreed with mergekit and FusionBench, each
against a value worked out by hand (the old result is in each test's comment)."""

import math

import torch

from pipelines.merging import merge, sparsify
from pipelines.merging.task_vectors import PARALLEL_COS, model_stock_ratio
from rounding import U32


def close(tensor, expected):
    """To float32 rounding: each value below takes fewer than 16 rounding steps over values no
    larger than 64 (the largest input), and the goldens are exact in binary or round once."""
    expected = torch.tensor(expected, dtype=torch.float64)
    tol = 16 * U32 * max(1.0, float(expected.abs().max()), 64.0)
    torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=tol)


def states(*taus, base=None):
    base = torch.zeros(len(taus[0])) if base is None else base
    return [{"w": base + torch.tensor(t)} for t in taus], {"w": base}


def test_ties_with_a_negated_model_adds_only_what_agrees_with_the_elected_sign():
    # weighted task vectors: 1 * [1, -2] and -1 * [0.5, 1] = [-0.5, -1]; their sums [0.5, -3]
    # elect [+, -]. Entry 0: only the first agrees -> 1. Entry 1: both agree (-2 and -1) -> their
    # mean -1.5, or their sum -3. (Agreement judged on the unweighted [0.5, 1] gave [0, -2]: entry 0
    # added the negated 0.5 against the elected +, and divided by the weights' sum 0.)
    models, base = states([1.0, -2.0], [0.5, 1.0])
    close(merge("ties", models, base, weights=[1.0, -1.0], density=1.0)["w"], [1.0, -1.5])
    close(merge("ties", models, base, weights=[1.0, -1.0], density=1.0, combine="sum")["w"], [1.0, -3.0])
    # one negated model alone is its negation, as task arithmetic has it
    alone, base = states([1.0, -2.0])
    close(merge("ties", alone, base, weights=[-1.0], density=1.0)["w"], [-1.0, 2.0])
    close(merge("task_arithmetic", alone, base, weights=[-1.0])["w"], [-1.0, 2.0])


def test_slerp_of_nearly_antiparallel_tensors_falls_back_to_linear_interpolation():
    # cos = -64 / sqrt(64^2 + 0.064^2) = -(1 - 5e-7): antiparallel to well past the threshold, so
    # t = 0.5 is the midpoint [0, 0.032]. (The spherical weights sin(θ/2) / sin θ ~ 1000 gave a
    # result of norm ~ 6e4 from two inputs of norm 64.)
    a, b = {"w": torch.tensor([64.0, 0.0])}, {"w": torch.tensor([-64.0, 0.064])}
    cos = -64 / math.hypot(64, 0.064)
    assert cos < -PARALLEL_COS
    close(merge("slerp", [a, b], t=0.5)["w"], [0.0, 0.032])
    close(merge("slerp", [a, b], t=0.25)["w"], [32.0, 0.016])
    # inside the threshold SLERP stays spherical: at 90 degrees, t = 0.5 is (a + b) / sqrt(2)
    c = {"w": torch.tensor([0.0, 64.0])}
    close(merge("slerp", [a, c], t=0.5)["w"], [64 / math.sqrt(2), 64 / math.sqrt(2)])


def test_model_stock_of_opposite_task_vectors_keeps_the_base():
    # two opposite task vectors: cos = -1, the ratio 2 cos / (1 + cos) divides by zero (a layer of
    # 9.8e7 before); any cos <= 0 gives a ratio <= 0, so the base is kept
    models, base = states([1.0, 0.0], [-1.0, 0.0], base=torch.tensor([1.0, 2.0]))
    close(merge("model_stock", models, base)["w"], [1.0, 2.0])
    assert model_stock_ratio(torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(3) / 2]])) == 0.0  # cos = -1/2
    # three task vectors at 120 degrees: mean pairwise cos = -1/2 = -1/(N-1), the zero denominator
    third = [[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]]
    assert model_stock_ratio(torch.tensor(third, dtype=torch.float64)) == 0.0
    # a positive cos is the paper's: cos 1/2 between two task vectors gives t = 1 / 1.5 = 2/3
    paper = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    assert math.isclose(model_stock_ratio(paper), 2 / 3, rel_tol=1e-12)  # float64 throughout: a few U64


def test_ties_updates_every_tensor_however_small():
    # density 0.2 of 4 entries: int(0.8) = 0 kept nothing, so a bias never moved; now the largest
    # entry survives. Two models: [0, -0.4, 0, 0] and [0.5, 0, 0, 0] after trimming, elected [+, -, +, +]
    models, base = states([0.1, -0.4, 0.2, 0.3], [0.5, 0.1, -0.2, 0.0])
    close(merge("ties", models, base, density=0.2)["w"], [0.5, -0.4, 0.0, 0.0])
    assert [sparsify.keep_count(n, 0.2) for n in (0, 1, 4, 5, 8, 10)] == [0, 1, 1, 1, 1, 2]
    # the model-wide cut too: of one 4-entry model the largest magnitude is the cut
    assert sparsify.model_threshold([torch.tensor([0.1, -0.4, 0.2, 0.3])], 0.2) == float(torch.tensor(0.4))
