"""DELLA, MagMax, PCB, the Karcher mean and SLERP of many models, against values worked out by hand
and the properties their papers state."""

import math

import numpy as np
import pytest
import torch

from pipelines.errors import ConfigError
from pipelines.merging import MERGE_METHODS, merge
from pipelines.merging import sparsify
from pipelines.merging.competition import balance_scores
from pipelines.seeding import torch_generator
from merge_models import adamerging_setup
from rounding import U32

ZERO4 = {"w": torch.zeros(4)}


def close(tensor, expected, magnitude=1.0, steps=16):
    """To float32 rounding: these merges take fewer than ``steps`` rounding steps over values no
    larger than ``magnitude``; the decimal goldens round once more."""
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=steps * U32 * max(magnitude, 1.0))


def test_magmax_takes_the_largest_magnitude_entry_and_the_first_at_a_tie():
    taus = [torch.tensor([1.0, -3.0, 0.0, 2.0]), torch.tensor([-2.0, 1.0, 0.0, -2.0])]
    base = {"w": torch.full((4,), 10.0)}
    # |-2| > |1|; |-3| > |1|; both 0; |2| = |-2|: the first model's +2
    close(merge("magmax", [{"w": base["w"] + t} for t in taus], base)["w"], [8.0, 7.0, 10.0, 12.0], 12)
    close(merge("magmax", [{"w": t} for t in taus], ZERO4, scale=0.5)["w"], [-1.0, -1.5, 0.0, 1.0])


def test_della_probabilities_by_hand():
    # magnitudes 0.1, 0.4, 0.3, 0.2 rank 0, 3, 2, 1: keep probabilities 0.3 + 0.4 * rank / 3
    row = torch.tensor([0.1, -0.4, 0.3, 0.2], dtype=torch.float64)
    probability = sparsify.della_keep_probabilities(row, 0.5, 0.2)
    close(probability, [0.3, 0.7, 0.3 + 0.8 / 3, 0.3 + 0.4 / 3])
    assert float(probability.mean()) == pytest.approx(0.5, abs=1e-15)
    # rows of a matrix are ranked on their own; ties go by position; one entry keeps `density`
    matrix = sparsify.della_keep_probabilities(torch.tensor([[2.0, 2.0], [5.0, 1.0]]), 0.5, 0.1)
    close(matrix, [[0.4, 0.6], [0.6, 0.4]])
    close(sparsify.della_keep_probabilities(torch.tensor([3.0]), 0.4, 0.1), [0.4])


def test_della_keeps_density_in_expectation_and_is_unbiased():
    tau = torch.randn(4000, generator=torch_generator(1), dtype=torch.float64)
    density, epsilon = 0.4, 0.3
    kept = torch.stack([sparsify.della(tau, density, epsilon, torch_generator(100 + s)) != 0 for s in range(50)])
    # 50 x 4000 Bernoulli draws, each with variance at most 1/4: the kept fraction's standard deviation
    # is at most 0.5 / sqrt(200000) ~ 0.0011; 5 of them is far outside chance
    assert abs(float(kept.double().mean()) - density) < 5 * 0.5 / math.sqrt(kept.numel())
    draws = torch.stack([sparsify.della(tau[:20], density, epsilon, torch_generator(s)) for s in range(20000)])
    probability = sparsify.della_keep_probabilities(tau[:20], density, epsilon)
    # entry i is tau_i / q_i with probability q_i, else 0: mean tau_i, variance tau_i^2 (1 - q_i) / q_i
    spread = tau[:20].abs() * torch.sqrt((1 - probability) / probability / draws.shape[0])
    assert bool(((draws.mean(0) - tau[:20]).abs() <= 5 * spread).all())


def test_della_at_epsilon_zero_is_dare_and_the_parameters_are_checked():
    taus = [torch.randn(30, generator=torch_generator(i)) for i in range(3)]
    states, base = [{"w": t} for t in taus], {"w": torch.zeros(30)}
    assert torch.equal(merge("della_linear", states, base, density=0.5, epsilon=0.0, seed=3)["w"],
                       merge("dare_linear", states, base, density=0.5, seed=3)["w"])
    assert torch.equal(merge("della", states, base, density=0.5, epsilon=0.0, seed=3)["w"],
                       merge("dare_ties", states, base, density=0.5, seed=3)["w"])
    with pytest.raises(ConfigError, match="epsilon must satisfy 0 <= epsilon < density"):
        merge("della", states, base, density=0.2, epsilon=0.3)


def pcb_by_hand(taus, ratio):
    """The recipe in scalar Python, step by step (see pipelines/merging/competition.py)."""
    n, d = len(taus), len(taus[0])

    def clip(row, low, high):
        ordered = sorted(row)
        bottom, top = ordered[min(int(d * low), d - 1)], ordered[max(int(d * (1 - high)) - 1, 0)]
        return [min(max(v, bottom), top) for v in row]

    def min_max(row):
        low, high = min(row), max(row)
        return [(v - low) / (high - low) if high > low else 0.0 for v in row]

    magnitude = [clip([abs(v) for v in t], 1e-4, 1e-4) for t in taus]
    clipped = [[math.copysign(m, v) if v != 0 else 0.0 for m, v in zip(ms, t)] for ms, t in zip(magnitude, taus)]
    intra = [[math.exp(n * v * v) for v in min_max(ms)] for ms in magnitude]
    total = [sum(t[k] for t in taus) for k in range(d)]
    inter = []
    for i in range(n):
        row = []
        for k in range(d):
            logits = [taus[j][k] * total[k] for j in range(n)]
            top = max(logits)
            row.append(math.exp(logits[i] - top) / sum(math.exp(v - top) for v in logits))
        inter.append(row)
    weights = [min_max(clip([a * b for a, b in zip(intra[i], inter[i])], 1 - ratio, 0.0)) for i in range(n)]
    merged = []
    for k in range(d):
        mass = sum(weights[i][k] for i in range(n))
        merged.append(sum(clipped[i][k] * weights[i][k] for i in range(n)) / max(mass, 1e-12))
    return merged


def test_pcb_by_hand():
    taus = [[0.5, -0.2, 0.1, 0.9, -0.4, 0.3], [-0.6, 0.3, 0.2, 0.8, 0.1, -0.3], [0.4, -0.1, -0.7, -0.2, 0.05, 0.6]]
    states, base = [{"w": torch.tensor(t)} for t in taus], {"w": torch.zeros(6)}
    # float32 task vectors (the models are float32) against the same recipe in float64 arithmetic:
    # the exponentials and softmax amplify a float32 input error by at most e^3 * 3 here
    exact = pcb_by_hand([[float(torch.tensor(v)) for v in t] for t in taus], 0.5)
    close(merge("pcb", states, base, ratio=0.5)["w"], exact, steps=64)
    close(merge("pcb", states, base, ratio=0.5, scale=0.3)["w"], [0.3 * v for v in exact], steps=64)


def test_pcb_keeps_the_stated_fraction_of_each_task_vector():
    taus = torch.randn(3, 1000, generator=torch_generator(2), dtype=torch.float64)
    for ratio in (0.1, 0.2, 0.5):
        _, weights = balance_scores(taus, ratio)
        # the score below the (1 - ratio) quantile, and the entry at it, are dropped (distinct scores)
        kept = (weights > 0).sum(1)
        assert kept.tolist() == [1000 - int(1000 * (1 - ratio)) - 1] * 3
    with pytest.raises(ConfigError, match="at least 2"):
        merge("pcb", [{"w": torch.ones(3)}], {"w": torch.zeros(3)})


def test_karcher_mean_by_hand():
    a, b, c = ({"w": torch.tensor(v)} for v in ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]))
    # two orthogonal directions: the midpoint direction, at the mean norm 1.5
    close(merge("karcher", [a, b])["w"], [1.5 / math.sqrt(2), 1.5 / math.sqrt(2), 0.0], 2)
    # weights 1 : 3 put the mean 3/4 of the way along the 90-degree arc, at norm (1 + 6) / 4
    angle = 0.75 * math.pi / 2
    close(merge("karcher", [a, b], weights=[1, 3])["w"], [1.75 * math.cos(angle), 1.75 * math.sin(angle), 0.0], 2)
    # three orthogonal directions: the diagonal, at norm 2
    close(merge("karcher", [a, b, c])["w"], [2 / math.sqrt(3)] * 3, 2)
    with pytest.raises(ConfigError, match="non-negative weight per model"):
        merge("karcher", [a, b], weights=[1, -1])


def test_karcher_of_two_equals_slerp_at_the_middle_and_slerp_takes_many_models():
    x = torch.randn(50, generator=torch_generator(7))
    y = torch.randn(50, generator=torch_generator(8))
    y = y * (x.norm() / y.norm())  # equal norms: SLERP's weights on the vectors match the mean norm
    two = [{"w": x}, {"w": y}]
    # float32 tensors through ~20 float64 steps each way, rounded once to float32
    close(merge("karcher", two)["w"], merge("slerp", two, t=0.5)["w"].tolist(), float(x.abs().max()), 64)
    three = two + [{"w": -x}]
    assert torch.equal(merge("slerp", three)["w"], merge("karcher", three)["w"])
    assert {"della", "della_linear", "magmax", "pcb", "karcher"} <= set(MERGE_METHODS.names())


def test_lines_scales_each_layer_of_the_merged_task_vector_by_depth():
    base = {"0.weight": torch.zeros(2), "0.bias": torch.zeros(1), "2.weight": torch.ones(2), "4.weight": torch.zeros(1),
            "steps": torch.tensor([7])}
    taus = [{"0.weight": [0.4, -0.2], "0.bias": [0.1], "2.weight": [0.2, 0.6], "4.weight": [-0.3]},
            {"0.weight": [0.0, 0.2], "0.bias": [0.3], "2.weight": [0.4, -0.2], "4.weight": [0.5]}]
    states = [{n: base[n] + torch.tensor(t[n]) if n in t else base[n] for n in base} for t in taus]
    depths = {"0.weight": 1, "0.bias": 1, "2.weight": 2, "4.weight": 3}
    # task arithmetic's sum, then 0.5 + 1.0 * (l - 1) / 2: layers 1, 2, 3 scaled by 0.5, 1.0, 1.5
    out = merge("lines", states, base, depths=depths, alpha=0.5, beta=1.0)
    close(out["0.weight"], [0.2, 0.0])
    close(out["0.bias"], [0.2])
    close(out["2.weight"], [1.6, 1.4], 2)
    close(out["4.weight"], [0.3])
    assert torch.equal(out["steps"], torch.tensor([7]))
    # alpha 1, beta 0 leaves the base method's merge, bit for bit, for TIES and its parameters too
    for method, extra in (("task_arithmetic", {"scale": 0.7}), ("ties", {"density": 0.5})):
        plain = merge(method, states, base, **extra)
        scaled = merge("lines", states, base, depths=depths, base_method=method, base_params=extra)
        assert all(torch.equal(plain[n], scaled[n]) for n in base)
    with pytest.raises(ConfigError, match="merge.params.lines.base_params: ties does not take \\['t'\\]"):
        merge("lines", states, base, depths=depths, base_method="ties", base_params={"t": 0.5})
    with pytest.raises(ConfigError, match="merge.params.lines.base_params.density: input should be less than or equal to 1"):
        merge("lines", states, base, depths=depths, base_method="ties", base_params={"density": 2.0})
    with pytest.raises(ConfigError, match="no layer depth for \\['4.weight'\\]"):
        merge("lines", states, base, depths={n: 1 for n in ("0.weight", "0.bias", "2.weight")})


def test_every_registered_model_declares_its_layer_depths():
    from pipelines.models import MODELS, build_model
    from pipelines.models.zoo import layer_depths

    shapes = {"mlp": (64,), "cnn": (1, 8, 8), "cnn1d": (1, 40), "resnet18_cifar": (3, 8, 8)}
    for name in MODELS.names():
        names = list(build_model(name, shapes[name], 3, seed=0).state_dict())
        depths = layer_depths(name, names)
        values = [depths[n] for n in names]
        # every parameter has a depth, depths run 1..L without gaps, and never decrease along the model
        assert set(depths) == set(names) and sorted(set(values)) == list(range(1, max(values) + 1))
        assert values == sorted(values)
    resnet = layer_depths("resnet18_cifar", list(build_model("resnet18_cifar", (3, 8, 8), 3, seed=0).state_dict()))
    assert resnet["stem.0.weight"] == 1 and resnet["layer1.0.conv1.weight"] == 2 and resnet["layer4.1.bn2.bias"] == 9
    assert resnet["fc.weight"] == 10


def test_adamerging_lowers_the_prediction_entropy_and_merges_with_what_it_learned():
    from torch.func import functional_call

    from pipelines.merging.adaptive import adamerging, learn_coefficients, prediction_entropy

    model, base, states, inputs = adamerging_setup()

    def entropy_of(state):
        return float(prediction_entropy(functional_call(model.eval(), state, (inputs,))))

    for granularity in ("task", "layer"):
        learned = learn_coefficients(states, base, inputs, model, granularity, steps=60, lr=0.05, seed=1)
        assert learned.coefficients.shape == ((3,) if granularity == "task" else (3, len(base)))
        merged = merge("adamerging", states, base, unlabelled_inputs=inputs, model=model, granularity=granularity,
                       steps=60, lr=0.05, seed=1)
        start = merge("task_arithmetic", states, base, scale=0.3)  # every coefficient at its initial 0.3
        assert entropy_of(merged) < entropy_of(start)
        for index, (name, reference) in enumerate(base.items()):
            weights = learned.coefficients if granularity == "task" else learned.coefficients[:, index]
            expected = reference.double() + sum(w * (s[name].double() - reference.double()) for w, s in zip(weights.double(), states))
            torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=4 * U32 * float(expected.abs().max()))


def test_adamerging_reads_inputs_never_labels():
    from pipelines.data.dataset import ArrayDataset
    from pipelines.merging.run import MergeInputs
    from pipelines.models import ModelCard

    model, base, states, inputs = adamerging_setup()

    class InputsOnly:
        """The test split with labels that raise when read."""

        x = inputs.numpy()

        @property
        def y(self):
            raise AssertionError("AdaMerging read the test labels")

    card = ModelCard(model="mlp", input_shape=(6,), num_classes=3, seed=0, task="classification")
    val = ArrayDataset(inputs.numpy(), np.zeros(200, np.int64), np.arange(200), num_classes=3)
    supplied = MergeInputs(card, ["a", "b", "c"], states, base, val, InputsOnly(), seed=0, batch_size=64, ece_bins=5,
                           target_scale=1.0)
    entry = MERGE_METHODS.get("adamerging")
    extra = {need: supplied.supply(need) for need in entry.needs}
    assert torch.equal(extra["unlabelled_inputs"], inputs)
    merge("adamerging", states, base, steps=3, **extra)


def test_adamerging_refuses_a_regression_model_and_bad_parameters():
    from pipelines.registry import check_arguments

    model, base, states, inputs = adamerging_setup(classes=1)
    with pytest.raises(ConfigError, match="entropy of class predictions"):
        merge("adamerging", states, base, unlabelled_inputs=inputs, model=model, steps=2)
    with pytest.raises(ConfigError, match="granularity"):
        check_arguments(MERGE_METHODS.get("adamerging").function, {"granularity": "block"}, "merge.params.adamerging")


def chain_models(count=2, seed=0):
    from pipelines.models import build_model

    models = [build_model("mlp", (6,), 3, seed=seed + k) for k in range(count)]
    return models, [{n: t.detach().clone() for n, t in m.state_dict().items()} for m in models]


def test_pleas_activation_matching_recovers_a_planted_permutation():
    from pipelines.merging.alignment import permute_state, sequential_spec
    from pipelines.merging.pleas import _chain, _matched_activations, _outputs, activation_matching

    models, (state, _) = chain_models()
    spec = sequential_spec(state)
    planted = {g: torch.randperm(n, generator=torch_generator(3)) for g, n in spec.sizes.items()}
    shuffled = permute_state(spec, state, planted)  # the same function, units in another order
    inputs = torch.randn(400, 6, generator=torch_generator(5))
    acts = [_matched_activations(spec, c, _outputs(c, inputs)) for c in (_chain(models[0], s) for s in (state, shuffled))]
    found = activation_matching(spec, acts[0], acts[1])
    for group in spec.sizes:
        # a unit no input activates (a dead ReLU) has no activations to match by: any place is
        # as good, and the function is the same; every live unit goes back where it was
        live = acts[0][group].abs().sum(0) > 0
        assert live.sum() > 0.9 * len(live)
        assert torch.equal(found[group][live], torch.argsort(planted[group])[live])
    restored = permute_state(spec, shuffled, found)
    with torch.no_grad():
        assert torch.equal(_outputs(_chain(models[0], restored), inputs)[-1], _outputs(_chain(models[0], state), inputs)[-1])


def test_pleas_fits_the_models_features_closer_than_weight_matching_alone():
    from torch.func import functional_call

    models, states = chain_models(count=3, seed=10)
    inputs = torch.randn(500, 6, generator=torch_generator(6))
    model = models[0].eval()
    with torch.no_grad():
        target = torch.stack([functional_call(model, s, (inputs,)) for s in states]).mean(0)  # permutations keep each function

        def error(state):
            return float(((functional_call(model, state, (inputs,)) - target) ** 2).mean())

        fitted = merge("pleas", states, unlabelled_inputs=inputs, model=model, samples=500)
        matched = merge("weight_matching", states)
    assert error(fitted) < 0.5 * error(matched)
    with pytest.raises(ConfigError, match="sequential models"):
        merge("pleas", states, unlabelled_inputs=inputs, model=torch.nn.Linear(6, 3))
