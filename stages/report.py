"""Report: a static HTML page with figures from the result tables.

Usage:
    python -m stages.report

Reads the result tables and plot data; writes ``<report>/index.html`` and its PNG figures.
"""

from __future__ import annotations

import pandas as pd

from pipelines import storage, tables
from pipelines.evaluation.report import render_report
from stages.common import entrypoint, params


@entrypoint("report")
def main(argv: list[str]) -> None:
    p = params()
    results = p.paths.results

    def table(name: str) -> pd.DataFrame:
        return tables.read_table(storage.join(results, f"{name}.parquet"), name)

    reliability = pd.read_csv(storage.join(p.paths.plots, "reliability.csv"))
    interpolation = pd.read_csv(storage.join(p.paths.plots, "interpolation.csv"))
    pair = storage.read_json(storage.join(results, "interpolation.json"))["interpolation"]["pair"]
    grid_cells = pd.read_csv(storage.join(p.paths.plots, "tune_grid.csv"))
    page = render_report(
        p.paths.report, table("train_history"), table("trials"), table("merges"), table("evaluation"), reliability,
        interpolation, table("merge_search"), pair, grid_cells,
    )
    print(f"report: {page}")


if __name__ == "__main__":
    main()
