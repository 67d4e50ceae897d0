"""params.yaml, validated: one frozen pydantic model per section.

Every stage loads the whole file through :func:`load_params`, so a bad value anywhere fails
before any work starts, with a one-line message that names the key and the value. Names looked up
in registries are checked one floor up, in :mod:`pipelines.validation`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError
from pipelines.storage import check_options, check_shared_uri
from pipelines.urls import check_no_credentials, looks_secret, redact

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # strict: `epochs: true` is not 1 and `lr: "0.1"` is not a number (an int is a float)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _unique_nonempty(values: list[str]) -> list[str]:
    if not values:
        raise ValueError("must list at least one name")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"lists {duplicates} more than once")
    return values


class DataParams(Section):
    """Which dataset and how it is split (stratified, seeded)."""

    name: str = "mnist1d"
    source: str | None = None  # URL of the raw data, for datasets that are not bundled
    options: dict[str, Any] = {}  # the loader's own parameters (mnist1d: num_samples; parquet: columns)
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    part_mib: PositiveFloat = 64  # raw inputs per Parquet part of a prepared split

    @field_validator("source")
    @classmethod
    def _source_holds_no_secret(cls, value: str | None) -> str | None:
        return check_no_credentials(value)

    @model_validator(mode="after")
    def _fractions_leave_a_train_split(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


class InputParams(Section):
    """How train and tune read their splits.

    ``mode``: ``memory`` sends each worker the whole split through the object store; ``stream``
    reads it through Ray Data part by part, so a worker holds one shuffle window; ``auto`` streams
    when the raw train and val inputs exceed ``stream_above_mib``. Both give the same batches in
    the same order: each epoch visits the parts in a seeded order and shuffles rows within
    windows of ``shuffle_window_mib`` (a split smaller than a window is fully shuffled).
    ``read_cpus`` is what each Ray Data read task reserves; streaming leaves that much CPU free
    beside the worker group, or the reads would starve.
    """

    mode: Literal["auto", "memory", "stream"] = "auto"
    stream_above_mib: PositiveFloat = 2048
    shuffle_window_mib: PositiveFloat = 256
    read_cpus: PositiveFloat = 0.5


class MixingParams(Section):
    """The mixing method of the train stage, its hyperparameters, and the loss it trains with.

    ``options`` holds method-specific parameters keyed by method (``{fmix: {decay_power: 3}}``);
    they apply wherever that method runs: train, augment shards, tune trials.
    """

    method: str = "mixup"
    alpha: PositiveFloat = 0.2
    mode: Literal["batch", "elem"] = "elem"
    prob: Fraction = 1.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    options: dict[str, dict[str, Any]] = {}
    loss: str = "soft_ce"
    loss_options: dict[str, Any] = {}
    source: Literal["online", "shards"] = "online"


class AugmentParams(Section):
    """Offline augmentation shards: one shard set per method."""

    methods: list[str] = ["mixup", "cutmix"]
    num_shards: PositiveInt = 4

    _check_methods = field_validator("methods")(_unique_nonempty)


UseGpu = Literal["auto"] | bool


class OptimParams(Section):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    step_epochs: PositiveInt = 30  # schedule "step": multiply by step_gamma every step_epochs after warm-up
    step_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class TrainParams(Section):
    """The base model's training run. ``batch_size`` is per worker: the global batch is
    ``batch_size * num_workers``."""

    model: str = "cnn1d"
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    num_workers: PositiveInt = 2
    cpus_per_worker: PositiveFloat = 1.0
    use_gpu: UseGpu = "auto"
    deterministic: bool = False  # deterministic kernels only (see pipelines.training.determinism)
    max_failures: Annotated[int, Field(ge=-1)] = 1
    optim: OptimParams = OptimParams()


class TuneParams(Section):
    """The sweep of fine-tunes from the base model over mixing hyperparameters (grid x ASHA)."""

    methods: list[str] = ["mixup", "cutmix"]
    alphas: list[PositiveFloat] = [0.2, 1.0]
    seeds: PositiveInt = 1  # repeats of each grid point with its own seed: mean +- std across them
    epochs: PositiveInt = 4
    batch_size: PositiveInt = 32
    num_workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    use_gpu: UseGpu = "auto"
    deterministic: bool = False
    max_concurrent_trials: PositiveInt = 2
    grace_period: PositiveInt = 2
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    optim: OptimParams = OptimParams(lr=0.01, warmup_epochs=0)

    _check_methods = field_validator("methods")(_unique_nonempty)

    @field_validator("alphas")
    @classmethod
    def _alphas_nonempty(cls, alphas: list[float]) -> list[float]:
        if not alphas:
            raise ValueError("must list at least one alpha")
        return alphas

    @model_validator(mode="after")
    def _grace_within_epochs(self) -> TuneParams:
        if self.grace_period > self.epochs:
            raise ValueError(f"grace_period must be <= epochs ({self.epochs}), got {self.grace_period}")
        return self


class MergeParams(Section):
    """Merge methods over the tune stage's fine-tunes; ``params`` holds each method's own
    parameters keyed by method (``{ties: {density: 0.2}}``); ``search`` lists candidate values of
    some of them, searched with Ray Tune on the validation split (``{ties: {density: [0.1, 0.2]}}``).
    ``use_gpu`` places the methods that run passes over data (AdaMerging) on a GPU, as
    ``train.use_gpu`` does (:mod:`pipelines.merging.placement`)."""

    methods: list[str] = ["uniform_soup", "greedy_soup"]
    include_base: bool = False
    params: dict[str, dict[str, Any]] = {}
    search: dict[str, dict[str, list[Any]]] = {}
    use_gpu: UseGpu = "auto"

    _check_methods = field_validator("methods")(_unique_nonempty)

    @field_validator("search")
    @classmethod
    def _check_search(cls, value: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for method, space in value.items():
            if not space:
                raise ValueError(f"search.{method} lists no parameters")
            for name, candidates in space.items():
                if not candidates:
                    raise ValueError(f"search.{method}.{name} lists no values")
        return value


class EvaluateParams(Section):
    """Test-split evaluation; ``interpolation_points`` points of the loss along the line between
    the two fine-tunes best on validation."""

    ece_bins: Annotated[int, Field(ge=2)] = 15
    batch_size: PositiveInt = 512
    interpolation_points: Annotated[int, Field(ge=2)] = 25


class RayParams(Section):
    """Where Ray runs, and how long a stage waits for it. ``RAY_ADDRESS`` in the environment wins
    over ``address``.

    ``address`` picks where the Ray stages run: none, a local instance; ``host:port``, join that
    cluster as a driver (on a cluster node); ``http(s)://head:8265``, job mode (each Ray stage a
    Ray job, its data through ``storage.shared_uri``). ``forward_env`` names variables whose values
    jobs get (an endpoint, a log level; never a credential: nodes have their own).

    ``connect_timeout_s`` bounds reaching a cluster. ``resource_wait_s`` is how long a stage waits
    for a cluster to offer resources it does not have now (an autoscaling cluster adding nodes);
    0 fails at once. A local instance has the resources it will ever have, so a request it cannot
    hold always fails at once. ``queue_wait_s`` is how long, on a cluster, a worker group that fits
    waits in Ray's queue while other jobs hold what it needs (queued experiments side by side); a
    local instance waits 60 s, since nothing but the stage itself competes there.

    ``runtime_env``: null, the cluster's nodes have mixpipe's dependencies (the node image); ``pip``
    or ``uv``, jobs and joining drivers install the pinned ones at start, for a stock Ray image
    (:mod:`pipelines.cluster.runtime_env`).
    """

    address: str | None = None
    num_cpus: PositiveInt | None = None
    connect_timeout_s: PositiveFloat = 30.0
    resource_wait_s: Annotated[float, Field(ge=0)] = 0.0
    queue_wait_s: PositiveFloat = 86400.0
    forward_env: list[str] = []
    runtime_env: Literal["pip", "uv"] | None = None

    @field_validator("forward_env")
    @classmethod
    def _forward_no_secret(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"lists {name!r}, which is not an environment variable name")
            if looks_secret(name):
                raise ValueError(
                    f"lists {name}, which looks like a credential: a job's environment is shown to anyone who can see the "
                    "cluster's dashboard; give the nodes their own credentials (their environment, an IAM role, "
                    "a Kubernetes secret)"
                )
        return value

    @field_validator("address")
    @classmethod
    def _address_holds_no_secret(cls, value: str | None) -> str | None:
        if value and value.lower().startswith("ray://"):
            raise ValueError("is a Ray Client address (ray://), which cannot run Ray Train or Tune drivers; use the "
                             "dashboard address http://<head>:8265 (job mode)")
        return check_no_credentials(value, hint="Ray's token authentication (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")


class StorageParams(Section):
    """Where state every node must see goes: Ray run state, and in job mode each stage's inputs and
    outputs. ``options`` are fsspec storage options for that store (an endpoint, a region; never a
    credential: those come from the environment)."""

    shared_uri: str | None = None
    options: dict[str, Any] = {}

    @field_validator("shared_uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        return check_shared_uri(check_no_credentials(value))

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_options(value)
        return value


class PathsParams(Section):
    """Where each stage writes; dvc.yaml reads the same keys, so no path is written twice."""

    prepared: str = "data/prepared"
    shards: str = "data/shards"
    base_model: str = "models/base"
    trials: str = "models/trials"
    merged: str = "models/merged"
    results: str = "results"
    plots: str = "results/plots"
    report: str = "report"
    live: str = "dvclive"
    metrics: str = "metrics.json"
    run_state: str = ".mixpipe/ray"


class Params(Section):
    seed: Annotated[int, Field(ge=0)] = 0
    data: DataParams = DataParams()
    input: InputParams = InputParams()
    mixing: MixingParams = MixingParams()
    augment: AugmentParams = AugmentParams()
    train: TrainParams = TrainParams()
    tune: TuneParams = TuneParams()
    merge: MergeParams = MergeParams()
    evaluate: EvaluateParams = EvaluateParams()
    ray: RayParams = RayParams()
    storage: StorageParams = StorageParams()
    paths: PathsParams = PathsParams()


def _format_error(error: ValidationError, source: str) -> str:
    """One line: the first problem with its dotted key and value, and how many more there are."""
    problems = error.errors()
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"]) or "<top level>"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        text = f"{key}: unknown key (a typo?)"
    elif first["type"] == "missing":
        text = f"{key}: required key is missing"
    else:
        text = f"{key} {message[0].lower()}{message[1:]}, got {redact(repr(first.get('input')))}"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{source}: {text}{more}"


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping (as read from YAML): types, ranges and cross-field rules. Registry
    names and the registered methods' options are :mod:`pipelines.validation`'s.

    Raises:
        ConfigError: a value is invalid.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None


class _ParamsLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-3`` and ``1.0e3`` are floats (YAML 1.2, and
    DVC's own reading of params.yaml), not the strings that strict validation would refuse."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml", section: str | None = None) -> Any:
    """Load and validate the whole params file; return it, or one section of it.

    Args:
        path: the params.yaml to read.
        section: a top-level key (``"train"``); ``None`` returns the whole :class:`Params`.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds an invalid value.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_ParamsLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    params = parse_params(raw, source=str(path))
    if section is None:
        return params
    if section not in Params.model_fields:
        raise ConfigError(f"{path}: no section {section!r}")
    return getattr(params, section)


def fingerprint(*objects: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able objects, pydantic models or dataclasses (for run and job names)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        return obj

    text = json.dumps([plain(o) for o in objects], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
