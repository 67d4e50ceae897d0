"""Checks of params.yaml that need the registries: every name a section picks exists, and the
registered methods' own options have the types and ranges their signatures declare.

:mod:`pipelines.config` checks types and ranges without importing a registry. A stage checks the
sections it reads (:data:`SECTIONS`), so it loads only the code it runs: which code a stage loads
is what its DVC deps list. The ``validate`` stage, first in the DAG, checks every section before
DVC touches any stage's outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.config import Params, load_params, parse_params
from pipelines.errors import ConfigError

# the sections whose registry names are checked, in the order their checks run
SECTIONS = ("data", "mixing", "augment", "train", "tune", "merge")


def check_params(raw: dict[str, Any], source: str = "params", sections: Iterable[str] = SECTIONS) -> Params:
    """:func:`~pipelines.config.parse_params`, then :func:`check_names`."""
    params = parse_params(raw, source)
    check_names(params, sections)
    return params


def load_checked(path: str | Path, sections: Iterable[str] = SECTIONS) -> Params:
    """:func:`~pipelines.config.load_params`, then :func:`check_names`."""
    params = load_params(path)
    try:
        check_names(params, sections)
    except ConfigError as error:
        raise type(error)(f"{path}: {error}") from None
    return params


def check_names(params: Params, sections: Iterable[str] = SECTIONS) -> None:
    """Check every registry name (and the options given to it) in ``sections`` of ``params``.

    Raises:
        ConfigError: naming the key, for the first problem found.
        UnknownNameError: a name is not registered; the message lists the known ones.
    """
    wanted = set(sections)
    unknown = wanted - set(SECTIONS)
    if unknown:
        raise ValueError(f"no name checks for sections {sorted(unknown)}")
    for section in SECTIONS:
        if section in wanted:
            _CHECKS[section](params)


def _data(params: Params) -> None:
    from pipelines.data import DATASETS
    from pipelines.registry import check_arguments

    check_arguments(DATASETS.get(params.data.name, key="data.name"), params.data.options, "data.options")


def _mixing(params: Params) -> None:
    from pipelines.data import dataset_task
    from pipelines.mixing import MIXERS, MixingSpec, check_loss_task, get_loss

    mixing = params.mixing
    MIXERS.get(mixing.method, key="mixing.method")
    for name in mixing.options:
        MIXERS.get(name, key=f"mixing.options.{name}")
    for name in sorted({mixing.method, *mixing.options, *params.augment.methods, *params.tune.methods} & set(MIXERS.names())):
        MixingSpec.from_params(mixing, method=name).build()  # options and ranges, before any work
    loss = get_loss(mixing.loss, **mixing.loss_options)
    check_loss_task(loss, mixing.loss, dataset_task(params.data.name), mixing.label_smoothing)
    if mixing.source == "shards":
        if mixing.method not in params.augment.methods:
            raise ConfigError(
                f"mixing.source is 'shards' but augment.methods {params.augment.methods} writes none for "
                f"mixing.method {mixing.method!r}"
            )
        if loss.needs_clean:
            raise ConfigError(f"mixing.loss {mixing.loss!r} needs the clean inputs, which shards do not hold; use mixing.source: online")


def _augment(params: Params) -> None:
    from pipelines.mixing import MIXERS

    for i, name in enumerate(params.augment.methods):
        if MIXERS.get(name, key=f"augment.methods.{i}").mixes_hidden:
            raise ConfigError(f"augment.methods.{i}: {name} mixes hidden features inside the model, so it has no shards")


def _train(params: Params) -> None:
    from pipelines.models import MODELS

    MODELS.get(params.train.model, key="train.model")


def _tune(params: Params) -> None:
    from pipelines.mixing import MIXERS

    for i, name in enumerate(params.tune.methods):
        MIXERS.get(name, key=f"tune.methods.{i}")


def _merge(params: Params) -> None:
    from pipelines.merging import MERGE_METHODS
    from pipelines.merging.registry import SUPPLIED_INPUTS
    from pipelines.registry import check_arguments

    for i, name in enumerate(params.merge.methods):
        MERGE_METHODS.get(name, key=f"merge.methods.{i}")
    for section in ("params", "search"):
        for name, given in getattr(params.merge, section).items():
            entry = MERGE_METHODS.get(name, key=f"merge.{section}.{name}")
            unknown = sorted(k for k in given if not entry.accepts(k) or k in SUPPLIED_INPUTS)
            if unknown:
                raise ConfigError(f"merge.{section}.{name}: {name} does not take {unknown}")
            if section == "search" and name not in params.merge.methods:
                raise ConfigError(f"merge.search.{name}: {name} is not in merge.methods {params.merge.methods}")
            if section == "params":
                check_arguments(entry.function, given, f"merge.params.{name}")
                if entry.check_params:
                    entry.check_params(given, f"merge.params.{name}")
            else:  # every candidate, so a bad one fails here and not in a trial once Ray runs
                fixed = params.merge.params.get(name, {})
                for parameter, candidates in given.items():
                    for candidate in candidates:
                        check_arguments(entry.function, {parameter: candidate}, f"merge.search.{name}")
                        if entry.check_params:
                            entry.check_params({**fixed, parameter: candidate}, f"merge.search.{name}")


_CHECKS = {"data": _data, "mixing": _mixing, "augment": _augment, "train": _train, "tune": _tune, "merge": _merge}
