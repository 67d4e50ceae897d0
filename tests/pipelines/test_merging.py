import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import ConfigError, DataError, UnknownNameError
from pipelines.merging import MERGE_METHODS, merge, run_merge, weighted_average


def states():
    return [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0]), "steps": torch.tensor(5)},
        {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.0]), "steps": torch.tensor(7)},
        {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor([2.0]), "steps": torch.tensor(9)},
    ]


def score_by_distance(target):
    """A score that is higher the closer w is to ``target``."""
    return lambda state: -float((state["w"] - torch.tensor(target)).abs().sum())


class ToyClassifier(torch.nn.Module):
    """Two-class logits from the toy states' tensors (``w``, ``b``; ``steps`` a buffer)."""

    def __init__(self):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, x):
        score = x @ self.w + self.b
        return torch.stack([score, -score], dim=1)


def supplied_inputs(need, models):
    """What the merge stage would hand a method for each input its row declares (tiny stand-ins)."""
    if need == "model":
        return ToyClassifier()
    if need == "unlabelled_inputs":
        return torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    return {
        "score": score_by_distance([3.0, 2.0]),
        "scores": None,
        "fishers": [{k: torch.ones_like(v) for k, v in m.items() if v.is_floating_point()} for m in models],
        "grams": [{} for _ in models],  # no linear layers: every tensor is averaged
        "depths": {"w": 1, "b": 2, "0.w": 1, "0.b": 2},
    }[need]


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_registry_methods_keep_keys_shapes_and_dtypes(name):
    """The walk reads each row's declaration (``needs``, ``members``, ``needs_base``), as the merge
    stage and config validation do; the declaration must match the function's parameters."""
    from pipelines.merging.registry import SUPPLIED_INPUTS

    entry = MERGE_METHODS.get(name)
    assert entry.paper_url.startswith("https://") and entry.pretty_name
    declared = {p for p in SUPPLIED_INPUTS if entry.accepts(p)} - {"states", "base"}
    assert set(entry.needs) == declared, f"{name} takes {sorted(declared)} but its row declares {entry.needs}"
    assert entry.accepts("base") == entry.needs_base
    models = states()[:2] if entry.members == "best_two" else states()
    if name == "weight_matching":  # aligns layer chains: the same tensors, named as nn.Sequential names them
        models = [{f"0.{k}": v for k, v in m.items()} for m in models]
    base = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor([0.0]), "steps": torch.tensor(1)} if entry.needs_base else None
    extra = {need: supplied_inputs(need, models) for need in entry.needs}
    if name == "pleas":  # fits the layers of a chain: two tiny ones, and inputs of their width
        chain = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        models = [{k: v + 0.1 * i for k, v in chain.state_dict().items()} for i in range(2)]
        extra["model"] = chain
    merged = merge(name, models, base, **extra)
    assert merged.keys() == models[0].keys()
    for key, value in merged.items():
        assert value.shape == models[0][key].shape and value.dtype == models[0][key].dtype


def test_uniform_soup_is_the_mean():
    result = run_merge("uniform_soup", states())
    assert torch.equal(result.state_dict["w"], torch.tensor([3.0, 2.0]))
    assert torch.equal(result.state_dict["b"], torch.tensor([1.0]))
    assert result.state_dict["steps"].item() == 5  # integer buffers come from the first model
    assert result.members == [0, 1, 2]


def test_greedy_soup_adds_only_what_helps():
    # own scores (distance to [3, 2]): model1 -4, model0 -2, model2 -6; order 0, 1, 2.
    # {0,1} -> w [2, 4]: -3 < -2, rejected; {0,2} -> w [3, 0]: -2 >= -2, kept.
    result = run_merge("greedy_soup", states(), score=score_by_distance([3.0, 2.0]))
    assert result.members == [0, 2]
    assert torch.equal(result.state_dict["w"], torch.tensor([3.0, 0.0]))


def test_greedy_soup_uses_given_scores_for_the_order():
    calls = []

    def score(state):
        calls.append(state["w"].tolist())
        return 0.5

    result = run_merge("greedy_soup", states(), score=score, scores=[0.1, 0.3, 0.2])
    # order by the given scores: 1, 2, 0; each candidate soup scores 0.5 >= the best so far
    assert result.members == [1, 2, 0]
    assert calls == [[4.0, 2.0], [3.0, 2.0]]  # only the two candidate soups were scored


def test_merge_reads_safetensors_files(tmp_path):
    paths = []
    for i, state in enumerate(states()):
        path = tmp_path / f"m{i}.safetensors"
        save_file(state, str(path))
        paths.append(str(path))
    assert torch.equal(merge("uniform_soup", paths)["w"], torch.tensor([3.0, 2.0]))


def test_weighted_average_and_errors():
    assert torch.equal(weighted_average(states()[:2], [3, 1])["w"], torch.tensor([1.5, 3.0]))
    with pytest.raises(DataError, match="different tensors"):
        merge("uniform_soup", [states()[0], {"w": torch.zeros(2)}])
    with pytest.raises(DataError, match="'w' is \\(3,\\)"):
        merge("uniform_soup", [states()[0], {**states()[1], "w": torch.zeros(3)}])
    with pytest.raises(DataError, match="non-negative weight"):
        weighted_average(states(), [1, -1, 1])
    with pytest.raises(ConfigError, match="needs a score"):
        merge("greedy_soup", states())
    with pytest.raises(ConfigError, match="not \\['density'\\]"):
        merge("uniform_soup", states(), density=0.5)
    with pytest.raises(UnknownNameError, match="merge.methods"):
        merge("ties_merging", states())
