"""The no-image route: mixpipe's pinned dependencies installed by Ray at job start.

With ``ray.runtime_env: pip`` (or ``uv``), jobs and drivers joining a cluster carry a runtime env
that installs the project's direct dependencies at the versions of ``requirements/constraints.txt``,
so a stock ``rayproject/ray`` image of the pinned Ray and Python runs the stages. Ray itself is left
out: the cluster's own Ray runs the job, and Ray refuses to replace itself in a runtime env. torch
goes in without the local ``+cpu`` tag of this machine's wheel, so on Linux pip takes PyPI's
default (CUDA) build. Transitive dependencies resolve against what the image already has.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError

INSTALLERS = ("pip", "uv")
CONSTRAINTS = Path("requirements") / "constraints.txt"
# Ray's own, in the image; the project's pin of it must equal the image's (a test checks the tags).
SKIPPED = {"ray"}


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file's ``name==version`` lines, local version
    labels (``+cpu``) dropped."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;+]+)(\+\S+)?", line)
        if match is None:
            raise ConfigError(f"{CONSTRAINTS}: {line!r} is not a name==version pin")
        pins[canonical(match.group(1))] = match.group(3)
    return pins


def pinned_dependencies(root: Path) -> list[str]:
    """The project's direct dependencies (``pyproject.toml``), each pinned to its constraints version,
    extras kept, Ray left out.

    Raises:
        ConfigError: a dependency has no pin in the constraints.
    """
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = constraint_pins((root / CONSTRAINTS).read_text())
    listed = []
    for requirement in dependencies:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?", requirement)
        name = canonical(match.group(1))
        if name in SKIPPED:
            continue
        if name not in pins:
            raise ConfigError(f"{CONSTRAINTS} pins no version of {name}, a dependency in pyproject.toml")
        listed.append(f"{name}{match.group(2) or ''}=={pins[name]}")
    return listed


def packages_env(installer: str | None, root: Path) -> dict[str, Any]:
    """The runtime-env entry that installs the pinned dependencies with ``installer`` (``pip`` or
    ``uv``); empty for None (the nodes have them: the node image)."""
    if installer is None:
        return {}
    if installer not in INSTALLERS:
        raise ConfigError(f"ray.runtime_env: {installer!r} is not one of {', '.join(INSTALLERS)} or null")
    packages = pinned_dependencies(root)
    if installer == "pip":
        # pip_check off: the image's packages outside the list need not agree with pip's resolver
        return {"pip": {"packages": packages, "pip_check": False}}
    return {"uv": {"packages": packages}}
