"""Strict types for every param: a value of the wrong type is refused with its key, never coerced
(``epochs: true`` was 1), including the registry methods' own options, and before any stage works."""

import pytest

from pipelines.config import load_params
from pipelines.errors import ConfigError
from pipelines.validation import check_params


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epochs": True}}, "train.epochs input should be a valid integer, got True"),
        ({"train": {"epochs": 2.0}}, "train.epochs input should be a valid integer, got 2.0"),
        ({"train": {"optim": {"lr": "0.1"}}}, "train.optim.lr input should be a valid number, got '0.1'"),
        ({"mixing": {"prob": True}}, "mixing.prob input should be a valid number, got True"),
        ({"tune": {"alphas": [0.2, False]}}, "tune.alphas.1 input should be a valid number, got False"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu"),
        ({"seed": "7"}, "seed input should be a valid integer, got '7'"),
        ({"merge": {"include_base": 1}}, "merge.include_base input should be a valid boolean, got 1"),
        ({"augment": {"methods": "mixup"}}, "augment.methods input should be a valid list, got 'mixup'"),
        # the registered methods' own options, checked against their signatures
        ({"merge": {"methods": ["ties"], "params": {"ties": {"density": True}}}},
         "merge.params.ties.density: input should be a valid number, got True"),
        ({"merge": {"methods": ["ties"], "params": {"ties": {"topk_scope": "layer"}}}},
         "merge.params.ties.topk_scope: input should be 'tensor' or 'model', got 'layer'"),
        ({"merge": {"methods": ["ties"], "search": {"ties": {"density": [0.2, 1.5]}}}},
         "merge.search.ties.density: input should be less than or equal to 1, got 1.5"),
        ({"merge": {"methods": ["slerp"], "search": {"slerp": {"t": [0.5, "0.7"]}}}},
         "merge.search.slerp.t: input should be a valid number, got '0.7'"),
        ({"mixing": {"options": {"cutmix": {"cutmix_minmax": [0.2, "half"]}}}},
         "mixing.options.cutmix.cutmix_minmax: input should be a valid number, got (0.2, 'half')"),
        ({"mixing": {"loss": "decoupled", "loss_options": {"eta": True}}},
         "mixing.loss_options.eta: input should be a valid number, got True"),
        ({"data": {"name": "mnist1d", "options": {"num_samples": 100.5}}},
         "data.options.num_samples: input should be a valid integer, got 100.5"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_with_its_key(raw, expected):
    with pytest.raises(ConfigError) as caught:
        check_params(raw)
    message = str(caught.value)
    assert expected in message and "\n" not in message


def test_yaml_floats_in_exponent_form_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as a string (YAML 1.1); DVC and YAML 1.2 read a float, and so do we
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  optim:\n    lr: 1e-3\n    weight_decay: 5.0E-4\n  epochs: 3\n")
    params = load_params(path)
    assert params.train.optim.lr == 0.001 and params.train.optim.weight_decay == 0.0005 and params.train.epochs == 3


def test_an_int_is_a_float_and_a_list_is_a_tuple():
    params = check_params({"train": {"optim": {"lr": 1}}, "mixing": {"options": {"cutmix": {"cutmix_minmax": [0.2, 1]}}}})
    assert params.train.optim.lr == 1.0
