"""Validate: check the whole params.yaml before any other stage runs.

Usage:
    python -m stages.validate

DVC removes a stage's outputs before it runs the stage's command, so a bad value found inside a
stage (``dvc exp run -S train.epochs=0``) used to cost that stage's previous outputs. Every stage
depends on this one's output, which DVC therefore runs first whenever params.yaml changes: a bad
value stops ``dvc repro`` here, with every existing output in place. The output's content does not
depend on the values, so a valid change re-runs only the stages whose params it touches.
"""

from __future__ import annotations

from pipelines import storage
from pipelines.validation import SECTIONS
from stages.common import entrypoint, params


@entrypoint("validate")
def main(argv: list[str]) -> None:
    p = params(*SECTIONS)
    storage.write_json(storage.join(p.paths.results, "params_check.json"), {"params.yaml": "valid", "checks": list(SECTIONS)})
    print("validate: params.yaml is valid")


if __name__ == "__main__":
    main()
