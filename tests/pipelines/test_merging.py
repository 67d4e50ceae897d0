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


@pytest.mark.parametrize("name", MERGE_METHODS.names())
def test_registry_methods_keep_keys_shapes_and_dtypes(name):
    entry = MERGE_METHODS.get(name)
    assert entry.paper_url.startswith("https://") and entry.pretty_name
    extra = {"score": score_by_distance([3.0, 2.0])} if entry.accepts("score") else {}
    models = states()[:2] if name == "slerp" else states()
    if name == "weight_matching":  # aligns layer chains: the same tensors, named as nn.Sequential names them
        models = [{f"0.{k}": v for k, v in m.items()} for m in models]
    base = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor([0.0]), "steps": torch.tensor(1)} if entry.needs_base else None
    if entry.accepts("fishers"):
        extra["fishers"] = [{k: torch.ones_like(v) for k, v in m.items() if v.is_floating_point()} for m in models]
    if entry.accepts("grams"):
        extra["grams"] = [{} for _ in models]  # no linear layers: every tensor is averaged
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
