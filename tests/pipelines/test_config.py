import pytest
import yaml
from pydantic import ValidationError

from pipelines.config import MixingParams, Params, fingerprint, load_params, parse_params
from pipelines.validation import check_params
from pipelines.errors import ConfigError


def test_repository_params_are_valid(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.name == "mnist1d" and params.train.model == "cnn1d"
    assert load_params(repo_root / "params.yaml", "mixing") == params.mixing


def test_defaults_are_valid_and_frozen():
    params = parse_params({})
    with pytest.raises(ValidationError, match="frozen"):
        params.seed = 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"mixing": {"alpha": -1}}, "mixing.alpha input should be greater than 0, got -1"),
        ({"mixing": {"mode": "pixel"}}, "mixing.mode input should be 'batch' or 'elem', got 'pixel'"),
        ({"mixing": {"prob": 1.5}}, "mixing.prob input should be less than or equal to 1, got 1.5"),
        ({"train": {"epochs": 0}}, "train.epochs input should be greater than 0, got 0"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key (a typo?)"),
        ({"train": {"optim": {"optimizer": "lbfgs"}}}, "train.optim.optimizer input should be 'sgd' or 'adamw', got 'lbfgs'"),
        ({"train": {"use_gpu": "maybe"}}, "train.use_gpu"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "data val_fraction + test_fraction must be < 1"),
        ({"tune": {"epochs": 2, "grace_period": 3}}, "tune grace_period must be <= epochs (2), got 3"),
        ({"tune": {"alphas": []}}, "tune.alphas must list at least one alpha"),
        ({"merge": {"methods": []}}, "merge.methods must list at least one name"),
        ({"augment": {"methods": ["mixup", "mixup"]}}, "augment.methods lists ['mixup'] more than once"),
        ({"seed": -1}, "seed input should be greater than or equal to 0, got -1"),
        ({"mixing": {"method": "cutmx"}}, "mixing.method: unknown mixing method 'cutmx'; known: cmixup, cutmix, fmix, manifold_mixup, mixup, none, resizemix, saliencymix"),
        ({"train": {"model": "vit"}}, "train.model: unknown model 'vit'"),
        ({"merge": {"methods": ["uniform_soup", "tes"]}}, "merge.methods.1: unknown merge method 'tes'"),
        ({"tune": {"methods": ["mixup", "fmixx"]}}, "tune.methods.1: unknown mixing method 'fmixx'"),
        ({"data": {"name": "imagenet"}}, "data.name: unknown dataset 'imagenet'"),
        ({"mixing": {"options": {"fmixx": {}}}}, "mixing.options.fmixx: unknown mixing method 'fmixx'"),
        ({"mixing": {"options": {"fmix": {"decy_power": 2}}}}, "mixing.options.fmix: mixing method 'fmix' does not take"),
        ({"mixing": {"options": {"fmix": {"decay_power": -2}}}}, "mixing.decay_power must be > 0, got -2"),
        ({"mixing": {"options": {"resizemix": {"scope": [0.9, 0.2]}}}}, "mixing.scope must satisfy 0 < low <= high <= 1"),
        ({"merge": {"params": {"ties": {"dens": 0.1}}}}, "merge.params.ties: ties does not take ['dens']"),
        ({"merge": {"params": {"tiez": {}}}}, "merge.params.tiez: unknown merge method 'tiez'"),
        ({"merge": {"params": {"lines": {"base_method": "ties", "base_params": {"dens": 0.1}}}}},
         "merge.params.lines.base_params: ties does not take ['dens']"),
        ({"merge": {"params": {"lines": {"base_method": "ties", "base_params": {"density": 2}}}}},
         "merge.params.lines.base_params.density: input should be less than or equal to 1, got 2"),
        ({"merge": {"methods": ["lines"], "params": {"lines": {"base_method": "ties"}},
                    "search": {"lines": {"base_params": [{"density": 0.2}, {"scale": "x"}]}}}},
         "merge.search.lines.base_params.scale: input should be a valid number"),
        ({"merge": {"use_gpu": "maybe"}}, "merge.use_gpu"),
        ({"mixing": {"loss": "focal"}}, "mixing.loss: unknown mixing loss 'focal'; known: decoupled, mse, rankmixup, soft_ce"),
        ({"mixing": {"loss": "decoupled", "loss_options": {"eta": -1}}}, "mixing.loss_options.eta must be >= 0, got -1"),
        ({"mixing": {"loss": "soft_ce", "loss_options": {"eta": 1}}}, "mixing.loss_options: mixing loss 'soft_ce' does not take"),
        ({"mixing": {"source": "disk"}}, "mixing.source input should be 'online' or 'shards', got 'disk'"),
        ({"mixing": {"method": "fmix", "source": "shards"}, "augment": {"methods": ["mixup"]}},
         "mixing.source is 'shards' but augment.methods ['mixup'] writes none for mixing.method 'fmix'"),
        ({"mixing": {"loss": "rankmixup", "source": "shards"}}, "mixing.loss 'rankmixup' needs the clean inputs"),
        ({"augment": {"methods": ["manifold_mixup"]}}, "augment.methods.0: manifold_mixup mixes hidden features"),
        ({"merge": {"search": {"ties": {"dens": [0.1]}}}}, "merge.search.ties: ties does not take ['dens']"),
        ({"merge": {"methods": ["uniform_soup"], "search": {"ties": {"density": [0.1]}}}},
         "merge.search.ties: ties is not in merge.methods ['uniform_soup']"),
        ({"merge": {"search": {"ties": {"density": []}}}}, "search.ties.density lists no values"),
        ({"data": {"name": "diabetes"}},
         "mixing.loss: 'soft_ce' is a classification loss but the data are a regression task; use one of ['mse']"),
        ({"data": {"name": "diabetes"}, "mixing": {"loss": "mse", "label_smoothing": 0.1}},
         "mixing.label_smoothing must be 0 for regression"),
        ({"tune": {"methods": ["manifold_mixup"]}, "mixing": {"options": {"manifold_mixup": {"layers": []}}}},
         "mixing.layers must be a non-empty list of mix points"),
        ({"ray": {"address": "ray://head:10001"}}, "ray.address is a Ray Client address (ray://), which cannot run"),
        ({"ray": {"forward_env": ["AWS_SECRET_ACCESS_KEY"]}}, "ray.forward_env lists AWS_SECRET_ACCESS_KEY, which looks like a credential"),
        ({"ray": {"forward_env": ["NOT A NAME"]}}, "ray.forward_env lists 'NOT A NAME', which is not an environment variable name"),
        ({"storage": {"shared_uri": "ftp://host/x"}}, "storage.shared_uri scheme ftp:// is not supported for shared state"),
        ({"storage": {"shared_uri": "s3://b/x?endpoint_url=http://minio"}}, "storage.shared_uri must not have a query string"),
        ({"storage": {"options": {"secret": "x"}}}, "storage.options must not hold credentials (secret)"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(raw, expected):
    with pytest.raises(ConfigError) as caught:
        check_params(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message


def test_several_problems_are_counted():
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\(s\)\)"):
        parse_params({"mixing": {"alpha": -1, "prob": 2}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mixing: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_params(bad)
    good = tmp_path / "good.yaml"
    good.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="no section 'nope'"):
        load_params(good, "nope")


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint(MixingParams(alpha=0.2), [1, 2])
    assert a == fingerprint(MixingParams(alpha=0.2), [1, 2])
    assert a != fingerprint(MixingParams(alpha=0.4), [1, 2])
    assert len(a) == 12
    from pipelines.mixing import MixingSpec

    assert fingerprint(MixingSpec("cutmix", 0.5)) == fingerprint({"method": "cutmix", "alpha": 0.5, "mode": "elem",
                                                                 "prob": 1.0, "label_smoothing": 0.0, "options": [],
                                                                 "loss": "soft_ce", "loss_options": []})
