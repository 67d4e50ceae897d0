"""What a stage reads and writes, as ``dvc.yaml`` declares it: the inputs a job needs staged, the
outputs it must bring back, and the params whose values define its result.

``dvc.yaml`` is the one place these are written; this reads the subset of its syntax the project
uses: ``${dotted.key}`` interpolation from params, ``foreach`` over a list with ``${item}``, and
``deps`` / ``outs`` / ``metrics`` / ``plots`` entries given as a path or as ``{path: options}``.
Dependencies under the code roots travel with the code (a job's ``working_dir``), not as data.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

CODE_ROOTS = ("stages", "pipelines")
_REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w.-]*)\s*\}")


@dataclass(frozen=True)
class StageIO:
    """One resolved ``dvc.yaml`` stage.

    Attributes:
        name: DVC's name for it (``train``, ``augment@mixup``).
        inputs: data dependencies, relative to the repo root, in ``dvc.yaml`` order.
        outputs: outs, metrics and plots (cached or not), relative to the repo root.
        params: the params keys it lists (``seed``, ``train``, ``mixing.alpha``).
    """

    name: str
    cmd: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...]


def lookup(values: Mapping[str, Any], dotted: str) -> Any:
    """``values["a"]["b"]`` for ``"a.b"``; KeyError naming the key if it is missing."""
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def interpolate(text: str, values: Mapping[str, Any]) -> str:
    """Replace every ``${key}`` in ``text`` by its value in ``values``."""

    def value(match: re.Match[str]) -> str:
        found = lookup(values, match.group(1))
        if isinstance(found, (Mapping, list)):
            raise ConfigError(f"dvc.yaml: ${{{match.group(1)}}} is not a plain value")
        return str(found)

    return _REFERENCE.sub(value, text)


def _paths(entries: Sequence[Any] | None, values: Mapping[str, Any]) -> list[str]:
    paths = []
    for entry in entries or []:
        path = next(iter(entry)) if isinstance(entry, Mapping) else entry
        paths.append(interpolate(str(path), values).rstrip("/"))
    return paths


def is_code(path: str) -> bool:
    return path.split("/", 1)[0] in CODE_ROOTS


def _resolve(name: str, body: Mapping[str, Any], values: Mapping[str, Any]) -> StageIO:
    outputs = [*_paths(body.get("outs"), values), *_paths(body.get("metrics"), values), *_paths(body.get("plots"), values)]
    params = []
    for entry in body.get("params") or []:
        if isinstance(entry, Mapping):  # {params file: [keys]}: only params.yaml is used here
            for keys in entry.values():
                params.extend(sorted(values) if keys is None else keys)  # `params.yaml:` alone: every value
        else:
            params.append(str(entry))
    return StageIO(
        name=name,
        cmd=interpolate(str(body["cmd"]), values),
        inputs=tuple(path for path in _paths(body.get("deps"), values) if not is_code(path)),
        outputs=tuple(outputs),
        params=tuple(params),
    )


def stages(dvc_yaml: str | Path, values: Mapping[str, Any]) -> dict[str, StageIO]:
    """Every stage of ``dvc_yaml``, with ``foreach`` expanded and paths interpolated from ``values``."""
    try:
        document = yaml.safe_load(Path(dvc_yaml).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{dvc_yaml}: no such file (run stages from the repository root)") from None
    resolved: dict[str, StageIO] = {}
    for name, body in (document.get("stages") or {}).items():
        try:
            if "foreach" in body:
                items = body["foreach"]
                if isinstance(items, str):
                    items = lookup(values, _REFERENCE.fullmatch(items.strip()).group(1))
                for item in items:
                    resolved[f"{name}@{item}"] = _resolve(f"{name}@{item}", body["do"], {**values, "item": item})
            else:
                resolved[name] = _resolve(name, body, values)
        except KeyError as missing:
            raise ConfigError(f"dvc.yaml: stage {name} refers to ${{{missing.args[0]}}}, which params do not have") from None
    return resolved


def find_stage(dvc_yaml: str | Path, values: Mapping[str, Any], command: Sequence[str], dvc_name: str | None = None) -> StageIO:
    """The stage DVC is running (``dvc_name``, from ``DVC_STAGE``) or else the one whose command is
    ``command`` (``["python", "-m", "stages.augment", "mixup"]``).

    Raises:
        ConfigError: no stage of ``dvc.yaml`` matches.
    """
    known = stages(dvc_yaml, values)
    if dvc_name:
        if dvc_name not in known:
            raise ConfigError(f"dvc.yaml has no stage {dvc_name!r}")
        return known[dvc_name]
    for stage in known.values():
        if shlex.split(stage.cmd) == list(command):
            return stage
    raise ConfigError(f"dvc.yaml has no stage whose command is {shlex.join(command)!r}")


def params_subset(values: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of ``keys`` (dotted) in ``values``: what a stage's result depends on."""
    return {key: lookup(values, key) for key in keys}
