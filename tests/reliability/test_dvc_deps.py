"""dvc.yaml's code deps are exactly the code each stage loads: every project module a stage imports
(at module level or inside a function, its parent packages included) is covered by a dep, and every
file a code dep covers is one the stage loads. A dep missing gives stale results after an edit; a
dep too many re-runs a stage (a sweep) for code it never runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("pipelines", "stages")


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(tree: ast.AST) -> set[str]:
    """Project modules an AST imports anywhere in it (``from a import b`` counts ``a.b`` when it is a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")}
    return {n for n in names if n.split(".")[0] in ROOTS and module_file(n)}


def stage_sections(tree: ast.AST) -> list[str]:
    """The sections a stage's ``params(...)`` call checks the names of."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "params":
            if node.args and isinstance(node.args[0], ast.Starred):
                from pipelines.validation import SECTIONS

                return list(SECTIONS)
            return [arg.value for arg in node.args]
    return []


def loaded_files(stage: str) -> set[str]:
    """Every project file ``python -m stages.<stage>`` can load. The validation module's section
    checks import registries inside functions: only the sections the stage checks count."""
    stage_tree = ast.parse(module_file(f"stages.{stage}").read_text())
    sections = stage_sections(stage_tree)
    seen: set[str] = set()
    todo = [f"stages.{stage}"]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's parent packages load first
            package = ".".join(parts[:i])
            if package in seen:
                continue
            seen.add(package)
            tree = ast.parse(module_file(package).read_text())
            if package == "pipelines.validation":
                body = [n for n in tree.body if not isinstance(n, ast.FunctionDef) or n.name in {f"_{s}" for s in sections}]
                tree = ast.Module(body=body, type_ignores=[])
            todo.extend(imported_names(tree) - seen)
    return {str(module_file(n).relative_to(REPO)) for n in seen}


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.split("/")[0] in ROOTS]


def covered(dep: str) -> set[str]:
    path = REPO / dep
    files = path.rglob("*.py") if path.is_dir() else [path]
    return {str(f.relative_to(REPO)) for f in files}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_definition(name: str) -> dict:
    definition = STAGES[name]
    return definition.get("do", definition)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_exactly_the_code_the_stage_loads(name):
    definition = stage_definition(name)
    stage = definition["cmd"].split()[2].removeprefix("stages.")
    loaded = loaded_files(stage)
    deps = code_deps(definition)
    listed = set().union(*(covered(d) for d in deps)) if deps else set()
    assert sorted(loaded - listed) == [], f"{name} loads code its deps do not list"
    assert sorted(listed - loaded) == [], f"{name}'s deps list code it never loads"
    for dep in deps:
        assert (REPO / dep).exists(), dep
