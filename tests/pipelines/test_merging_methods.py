"""Task-vector methods, SLERP and Model Stock against values worked out by hand."""

import math

import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.merging import merge
from pipelines.merging import sparsify
from pipelines.merging.consensus import disjoint_merge, elect_sign
from pipelines.seeding import torch_generator
from rounding import U32, assert_within

TAU = [
    torch.tensor([0.5, -0.2, 0.1, 0.0, 0.9, -0.4, 0.3, -0.05]),
    torch.tensor([-0.6, 0.3, 0.2, -0.1, 0.8, 0.1, -0.3, 0.02]),
    torch.tensor([0.4, -0.1, -0.7, 0.2, -0.2, 0.05, 0.6, -0.01]),
]
BASE = {"w": torch.zeros(8)}


def models(taus=TAU, base=None):
    base = BASE if base is None else base
    return [{"w": base["w"] + t} for t in taus]


def close(tensor, expected, tol=None):
    """Golden values, to float32 rounding: these merges take a few (< 16) rounding steps over
    values no larger than the largest expected one, and the decimal goldens themselves round once."""
    expected = torch.tensor(expected, dtype=torch.float64)
    if tol is None:
        tol = 16 * U32 * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=tol)


def test_task_arithmetic_golden():
    close(merge("task_arithmetic", models(), BASE)["w"], [0.3, 0.0, -0.4, 0.1, 1.5, -0.25, 0.6, -0.04])
    close(merge("task_arithmetic", models(), BASE, scale=0.5, weights=[1, 0, 0])["w"], (0.5 * TAU[0]).tolist())
    # a non-zero base is added back
    base = {"w": torch.full((8,), 2.0)}
    close(merge("task_arithmetic", models(base=base), base)["w"], [2.3, 2.0, 1.6, 2.1, 3.5, 1.75, 2.6, 1.96])


def test_ties_golden_mean_and_sum():
    close(merge("ties", models(), BASE, density=0.5)["w"], [0.45, 0.3, -0.7, 0.2, 0.85, -0.4, 0.45, 0.0])
    close(merge("ties", models(), BASE, density=0.5, combine="sum")["w"], [0.9, 0.3, -0.7, 0.2, 1.7, -0.4, 0.9, 0.0])


def test_ties_output_agrees_with_the_elected_sign():
    taus = [torch.randn(200, generator=torch_generator(i)) for i in range(4)]
    merged = merge("ties", models(taus, {"w": torch.zeros(200)}), {"w": torch.zeros(200)}, density=0.3)["w"]
    trimmed = torch.stack([sparsify.magnitude(t, 0.3) for t in taus])
    sign = elect_sign(trimmed)
    nonzero = merged != 0
    assert bool((torch.sign(merged[nonzero]) == sign[nonzero]).all())


def test_magnitude_top_k_per_tensor_or_per_model():
    # per tensor: 2 of 4 each; per model: the 4 largest of all 8 entries, wherever they are
    small, large = torch.tensor([0.1, -0.2, 0.3, 0.05]), torch.tensor([1.0, -2.0, 0.4, 0.01])
    close(sparsify.magnitude(small, 0.5), [0.0, -0.2, 0.3, 0.0])
    cut = sparsify.model_threshold([small, large], 0.5)
    assert cut == pytest.approx(0.3)
    close(sparsify.magnitude(small, 0.5, cut), [0.0, 0.0, 0.3, 0.0])
    close(sparsify.magnitude(large, 0.5, cut), [1.0, -2.0, 0.4, 0.0])
    base = {"a": torch.zeros(4), "b": torch.zeros(4)}
    per_model = merge("ties", [{"a": small, "b": large}], base, density=0.5, topk_scope="model")
    close(per_model["a"], [0.0, 0.0, 0.3, 0.0])
    close(per_model["b"], [1.0, -2.0, 0.4, 0.0])


def test_sign_election_options():
    stacked = torch.tensor([[0.5, 0.2, -0.1], [-0.5, 0.1, -0.1], [0.0, -0.4, 0.3]])
    assert elect_sign(stacked).tolist() == [1.0, -1.0, 1.0]  # a zero sum elects + (mergekit)
    assert elect_sign(stacked, zero_sum="zero").tolist() == [0.0, -1.0, 1.0]
    assert elect_sign(stacked, election="unweighted").tolist() == [1.0, 1.0, -1.0]  # counts: 0, +1, -1
    close(disjoint_merge(stacked, torch.tensor([1.0, -1.0, 1.0])), [0.5, -0.4, 0.3])
    close(disjoint_merge(stacked, torch.tensor([0.0, 1.0, -1.0])), [0.0, 0.15, -0.1])
    weighted = disjoint_merge(stacked, torch.tensor([1.0, 1.0, -1.0]), weights=torch.tensor([1.0, 3.0, 1.0]))
    close(weighted, [0.5, (0.2 + 3 * 0.1) / 4, -(0.1 + 3 * 0.1) / 4])


def test_dare_keeps_the_expected_fraction_and_is_unbiased():
    tau = torch.randn(20_000, generator=torch_generator(0))
    kept = sparsify.random_drop(tau, 0.3, torch_generator(1))
    fraction = float((kept != 0).double().mean())
    assert abs(fraction - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20_000)
    nonzero = kept != 0
    assert torch.equal(kept[nonzero], tau[nonzero] / 0.3)
    # unbiased: averaged over many drops the merge comes back to the task vector
    small = {"w": torch.tensor([1.0, -2.0, 0.5, 4.0])}
    zero = {"w": torch.zeros(4)}
    draws = 4000
    mean = torch.stack([merge("dare_linear", [small], zero, density=0.25, seed=s)["w"] for s in range(draws)]).mean(0)
    # each draw is w / 0.25 with probability 0.25, else 0: variance 3 w^2, so the mean of 4000 draws
    # has standard deviation sqrt(3 / 4000) |w|; five of those (a 1-in-a-million miss for fixed seeds)
    assert_within(mean, small["w"], 5 * math.sqrt(3 / draws) * small["w"].abs().double())
    l1 = sparsify.random_drop(tau, 0.3, torch_generator(1), rescale="l1")
    # the rescale factor is a ratio of two float32 sums of n terms (each within n * U32 relative, the
    # worst case of any summation order), then one product per entry; the check sums in float64
    total = float(tau.abs().double().sum())
    assert abs(float(l1.abs().double().sum()) - total) <= (2 * tau.numel() + 1) * U32 * total


def test_dare_is_seeded():
    ms, base = models(), BASE
    first = merge("dare_ties", ms, base, density=0.5, seed=3)["w"]
    assert torch.equal(first, merge("dare_ties", ms, base, density=0.5, seed=3)["w"])
    assert not torch.equal(first, merge("dare_ties", ms, base, density=0.5, seed=4)["w"])


def test_breadcrumbs_counts():
    tau = torch.arange(1, 101, dtype=torch.float32) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    out = sparsify.breadcrumbs(tau, density=0.5, gamma=0.1)
    magnitudes = out.abs()
    assert int((out != 0).sum()) == 50
    assert float(magnitudes.max()) == 90.0 and float(magnitudes[magnitudes > 0].min()) == 41.0  # 100..91 dropped, 90..41 kept
    assert torch.equal(out[out != 0], tau[out != 0])
    merged = merge("breadcrumbs", [{"w": tau}], {"w": torch.zeros(100)}, density=0.5, gamma=0.1)["w"]
    assert torch.equal(merged, out)


def test_slerp_golden_and_ends():
    a, b = {"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 2.0, 0.0, 0.0])}
    close(merge("slerp", [a, b], t=0.5)["w"], [0.707107, 1.414214, 0.0, 0.0])
    close(merge("slerp", [a, b], t=0.0)["w"], [1.0, 0.0, 0.0, 0.0])
    close(merge("slerp", [a, b], t=1.0)["w"], [0.0, 2.0, 0.0, 0.0])
    parallel = {"w": torch.tensor([3.0, 0.0, 0.0, 0.0])}
    close(merge("slerp", [a, parallel], t=0.25)["w"], [1.5, 0.0, 0.0, 0.0])  # falls back to lerp
    with pytest.raises(ConfigError, match="at least 2 models"):
        merge("slerp", [a])


def test_model_stock_ratio_by_hand():
    zero = {"w": torch.zeros(2)}
    # cos 0.5 between two unit task vectors: t = 2 * 0.5 / (1 + 0.5) = 2/3 of the way to their mean
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])
    close(merge("model_stock", [{"w": a}, {"w": b}], zero)["w"], (2 / 3 * (a + b) / 2).tolist())
    # orthogonal: t = 0, the base; identical: t = 1, the mean
    close(merge("model_stock", [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}], zero)["w"], [0.0, 0.0])
    close(merge("model_stock", [{"w": a}, {"w": a}], zero)["w"], a.tolist())


def test_linear_and_parameter_errors():
    close(merge("linear", models(), weights=[1, 1, 2])["w"], ((TAU[0] + TAU[1] + 2 * TAU[2]) / 4).tolist())
    with pytest.raises(ConfigError, match="needs the base model"):
        merge("ties", models())
    with pytest.raises(ConfigError, match="density must be in"):
        merge("ties", models(), BASE, density=0)
    with pytest.raises(ConfigError, match="combine must be one of"):
        merge("ties", models(), BASE, combine="median")
    with pytest.raises(ConfigError, match=r"ties takes .* not \['t'\]"):
        merge("ties", models(), BASE, t=0.5)


def test_merging_from_files_streams_the_same_result(tmp_path):
    from safetensors.torch import save_file

    from pipelines.merging.lazy import SafetensorsFile

    taus = [torch.randn(6, 5, generator=torch_generator(i)) for i in range(3)]
    base = {"w": torch.randn(6, 5, generator=torch_generator(9)), "b": torch.zeros(5, dtype=torch.bfloat16),
            "steps": torch.tensor(3)}
    paths = []
    for i, tau in enumerate(taus):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file({"w": base["w"] + tau, "b": base["b"] + i, "steps": base["steps"]}, paths[-1])
    save_file(base, str(tmp_path / "base.safetensors"))
    lazy = SafetensorsFile(paths[0])
    assert sorted(lazy) == ["b", "steps", "w"] and lazy.spec("b") == ((5,), torch.bfloat16)
    assert torch.equal(lazy["w"], base["w"] + taus[0]) and lazy["steps"].item() == 3
    in_memory = [{"w": base["w"] + t, "b": base["b"] + i, "steps": base["steps"]} for i, t in enumerate(taus)]
    for method, params in (("ties", {"density": 0.4, "topk_scope": "model"}), ("dare_ties", {"seed": 1}),
                           ("task_arithmetic", {}), ("model_stock", {})):
        streamed = merge(method, paths, str(tmp_path / "base.safetensors"), **params)
        loaded = merge(method, in_memory, base, **params)
        assert streamed.keys() == loaded.keys()
        assert all(torch.equal(streamed[k], loaded[k]) for k in loaded), method
    from pipelines.errors import DataError

    with pytest.raises(DataError, match="no model weights at"):
        SafetensorsFile(str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(DataError, match="not a safetensors file"):
        SafetensorsFile(str(tmp_path / "junk.safetensors"))


def test_top_k_keeps_earlier_indices_at_the_cut_like_a_stable_sort():
    from pipelines.merging.sparsify import _largest

    generator = torch_generator(0)
    for _ in range(200):  # small integer magnitudes: many ties at the cut
        n = int(torch.randint(1, 60, (1,), generator=generator))
        values = torch.randint(0, 6, (n,), generator=generator).double()
        count = int(torch.randint(0, n + 1, (1,), generator=generator))
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.argsort(values, descending=True, stable=True)[:count]] = True
        assert torch.equal(_largest(values, count), expected)


def test_fisher_merging_by_hand():
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}]
    fishers = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    merged = merge("fisher", states, fishers=fishers)
    close(merged["w"], [(1 * 1 + 3 * 3) / 4, 4.0])  # no Fisher mass: the plain mean
    assert merged["n"].item() == 4
    close(merge("fisher", states, fishers=fishers, weights=[3, 1])["w"], [(3 * 1 + 3 * 3) / 6, (3 * 2 + 6) / 4])
    with pytest.raises(ConfigError, match="one Fisher per model"):
        merge("fisher", states, fishers=fishers[:1])


def test_regmean_by_hand_and_as_the_least_squares_solution():
    # each model saw data along its own input axis only: the merge keeps both
    states = [{"w": torch.tensor([[1.0, 0.0]])}, {"w": torch.tensor([[0.0, 1.0]])}]
    grams = [{"w": torch.tensor([[2.0, 0.0], [0.0, 0.0]])}, {"w": torch.tensor([[0.0, 0.0], [0.0, 2.0]])}]
    close(merge("regmean", states, grams=grams)["w"], [[1.0, 1.0]])
    # with alpha = 1 the result zeroes the gradient of sum_i ||X_i W^T - X_i W_i^T||^2
    generator = torch_generator(3)
    xs = [torch.randn(20, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(2, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    merged = merge("regmean", [{"w": w} for w in ws], grams=[{"w": x.T @ x} for x in xs], alpha=1.0)["w"]
    gradient = sum((merged - w) @ (x.T @ x) for w, x in zip(ws, xs, strict=True))
    assert float(gradient.abs().max()) < 1e-9
    # an input no model's data reaches (singular Gram sum) keeps the plain average there
    seen_first_only = [{"w": torch.tensor([[2.0, 0.0], [0.0, 0.0]])}] * 2
    merged = merge("regmean", [{"w": torch.tensor([[1.0, 4.0]])}, {"w": torch.tensor([[3.0, 0.0]])}], grams=seen_first_only)["w"]
    close(merged, [[2.0, 2.0]])


def test_merge_statistics_from_data():
    from pipelines.merging.statistics import diagonal_fisher, linear_input_grams
    from pipelines.models import build_model

    model = build_model("mlp", (1, 2, 2), 3, seed=0)
    x = torch.randn(50, 1, 2, 2, generator=torch_generator(1))
    grams = linear_input_grams(model, x)
    assert sorted(grams) == ["1.weight", "3.weight", "5.weight"]
    flat = x.reshape(50, 4).double()
    torch.testing.assert_close(grams["1.weight"], flat.T @ flat)
    with torch.no_grad():
        hidden = model[:3](x).double()
    torch.testing.assert_close(grams["3.weight"], hidden.T @ hidden)
    # the sampled Fisher of the last bias approaches its expectation sum_y p_y (e_y - p)^2
    row = x[:1].repeat(3000, 1, 1, 1)
    fisher = diagonal_fisher(model, row, torch_generator(2))
    with torch.no_grad():
        p = torch.softmax(model(x[:1]).double(), -1)[0]
    expected = sum(p[y] * (torch.eye(3, dtype=torch.float64)[y] - p) ** 2 for y in range(3))
    torch.testing.assert_close(fisher["5.bias"].double(), expected, rtol=0.1, atol=1e-3)
    assert all(bool((f >= 0).all()) for f in fisher.values())
    again = diagonal_fisher(model, row[:50], torch_generator(2))
    assert all(torch.equal(again[k], diagonal_fisher(model, row[:50], torch_generator(2))[k]) for k in again)
