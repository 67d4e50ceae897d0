"""A static HTML report with PNG figures from the result tables."""

from __future__ import annotations

import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines.evaluation.summary import evaluation_view  # noqa: E402
from pipelines.evaluation.uncertainty import interval_column, interval_text  # noqa: E402


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path.name


def mixed_examples_png(frame: pd.DataFrame, input_shape: tuple[int, ...], title: str, count: int = 16) -> bytes:
    """A grid of the first ``count`` rows of a ``mixed_samples`` table, as PNG bytes.

    Images (C, H, W) are shown per-image min-max scaled (grey for one channel, RGB for three);
    1-D inputs (C, L) as curves, and feature vectors (C, 1) as bars. Each panel is titled with its
    labels (regression: standardised targets) and λ.
    """
    rows = frame.head(count)
    columns = min(8, len(rows))
    lines = -(-len(rows) // columns)
    # at most 8 x 1.15 in x 100 dpi = 920 px wide: the width DVC's and the report's pages show unscaled
    figure, axes = plt.subplots(
        lines, columns, figsize=(1.15 * columns, 1.4 * lines + 0.4), squeeze=False, layout="constrained"
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, row in zip(axes.flat, rows.itertuples(), strict=False):
        x = np.asarray(row.x, dtype=np.float32).reshape(input_shape)
        if x.ndim == 2:
            axis.axis("on")
            if x.shape[1] == 1:
                axis.bar(np.arange(len(x)), x[:, 0])
            else:
                axis.plot(x.T, linewidth=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
        else:
            image = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
            axis.imshow(image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1), cmap="gray")
        axis.set_title(f"{row.y:.3g}/{row.y_partner:.3g} λ={row.lam:.2f}", fontsize=7)
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def training_curves(history: pd.DataFrame, score: str, path: Path) -> str:
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(history["epoch"], history["train_loss"], marker="o", label="train (mixed)")
    loss_axis.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Base model loss")
    loss_axis.legend()
    score_axis.plot(history["epoch"], history[f"val_{score}"], marker="o", color="tab:green")
    score_axis.set(xlabel="epoch", ylabel=score, title=f"Validation {score}")
    return _save(figure, path)


KIND_COLOURS = {"base": "tab:gray", "trial": "tab:blue", "merged": "tab:orange"}
SIGNIFICANCE = 0.05  # the level at which a difference to the base is called larger than the noise


def score_intervals(evaluation: pd.DataFrame, score: str, best: str | None, path: Path) -> str:
    """Each model's test score with its 95% interval, best at the top, on an axis zoomed to the
    intervals; colour by kind (legend), ``*`` after a name whose paired test against the base has
    p < 0.05, and the model picked on validation marked."""
    from matplotlib.lines import Line2D

    ordered = evaluation.sort_values(score).reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(7.5, 0.32 * len(ordered) + 1.6))
    for i, row in ordered.iterrows():
        colour = KIND_COLOURS.get(row["kind"], "black")
        axis.plot([row[f"{score}_lo"], row[f"{score}_hi"]], [i, i], color=colour, linewidth=2)
        axis.plot(row[score], i, "o", color=colour, markersize=6 if row["model"] != best else 10,
                  markeredgecolor="black" if row["model"] == best else colour)
    labels = [f"{m}{' *' if p < SIGNIFICANCE and k != 'base' else ''}{'  (best)' if m == best else ''}"
              for m, k, p in zip(ordered["model"], ordered["kind"], ordered[f"{score}_p"], strict=True)]
    axis.set_yticks(range(len(ordered)), labels, fontsize=8)
    base = ordered.loc[ordered["kind"] == "base", score]
    if len(base):
        axis.axvline(float(base.iloc[0]), color="tab:gray", linestyle=":", linewidth=1)
    axis.set(xlabel=f"test {score} (95% interval)", title=f"Test {score} by model  (* p < {SIGNIFICANCE} against the base)")
    axis.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linewidth=2, label=k) for k, c in KIND_COLOURS.items()
               if k in set(ordered["kind"])]
    axis.legend(handles=handles, loc="lower right", fontsize=8, title="kind", title_fontsize=8)
    return _save(figure, path)


def reliability_grid(reliability: pd.DataFrame, models: list[str], path: Path, columns: int = 5) -> str:
    """Small multiples: one reliability diagram per model (accuracy against confidence of the
    filled bins, dashed diagonal = perfect calibration), in ``models`` order."""
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.2 * rows + 0.5), squeeze=False,
                                sharex=True, sharey=True)
    for axis in axes.flat[len(models):]:
        axis.axis("off")
    for axis, name in zip(axes.flat, models, strict=False):
        bins = reliability[(reliability["model"] == name) & (reliability["count"] > 0)]
        axis.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=0.8)
        axis.plot(bins["confidence"], bins["accuracy"], marker="o", markersize=3, linewidth=1)
        axis.set_title(name, fontsize=8)
        axis.set(xlim=(0, 1), ylim=(0, 1))
        axis.tick_params(labelsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("confidence", fontsize=8)
    for axis in axes[:, 0]:
        axis.set_ylabel("accuracy", fontsize=8)
    figure.suptitle("Reliability on the test split (dashed: perfectly calibrated)", fontsize=10)
    return _save(figure, path)


def interpolation_figure(curve: pd.DataFrame, pair: list[str] | None, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for split in ("val", "test"):
        if f"{split}_loss" in curve:
            axis.plot(curve["t"], curve[f"{split}_loss"], marker=".", label=f"{split} loss")
    first, second = pair if pair else ("first model", "second model")
    axis.set_xticks([0, 0.25, 0.5, 0.75, 1], [f"0\n{first}", "0.25", "0.5", "0.75", f"1\n{second}"], fontsize=8)
    axis.set(xlabel="t: weights (1 - t) * first + t * second", ylabel="loss",
             title="Loss along the line between the two best fine-tunes")
    axis.legend()
    return _save(figure, path)


def tune_heatmap(grid_cells: pd.DataFrame, score: str, path: Path) -> str:
    """Mixing method x alpha: the validation score of each grid point (mean over seeds)."""
    methods = list(dict.fromkeys(grid_cells["method"]))
    alphas = sorted(set(grid_cells["alpha"]))
    values = np.full((len(methods), len(alphas)), np.nan)
    labels = [["" for _ in alphas] for _ in methods]
    for cell in grid_cells.itertuples():
        i, j = methods.index(cell.method), alphas.index(cell.alpha)
        values[i, j], labels[i][j] = cell.score, cell.label
    figure, axis = plt.subplots(figsize=(1.6 * len(alphas) + 2.5, 0.7 * len(methods) + 1.4))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2
    for i in range(len(methods)):
        for j in range(len(alphas)):
            axis.text(j, i, labels[i][j], ha="center", va="center", fontsize=8,
                      color="white" if values[i, j] < middle else "black")
    axis.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    axis.set_yticks(range(len(methods)), methods)
    axis.set(xlabel="alpha", ylabel="mixing method", title=f"Tune grid: validation {score} (e: epochs when pruned)")
    figure.colorbar(image, ax=axis, label=f"validation {score}")
    return _save(figure, path)


def headline(evaluation: pd.DataFrame, trials: pd.DataFrame, merges: pd.DataFrame, task: str) -> tuple[str | None, str]:
    """The model picked on validation (the better of the best trial and the best merge) and one
    sentence on its test score against the base, with the interval and p-value."""
    from pipelines.evaluation.summary import pick_best

    best = pick_best(trials, merges, task)
    score = "accuracy" if task == "classification" else "r2"
    if best is None or best not in set(evaluation["model"]):
        return None, "No trial or merge to compare with the base."
    row = evaluation.set_index("model").loc[best]
    test = "McNemar" if score == "accuracy" else "paired bootstrap"
    verdict = ("larger than the noise" if row[f"{score}_p"] < SIGNIFICANCE
               else f"within the noise (p ≥ {SIGNIFICANCE})")
    against = f"{score}_vs_base"
    text = (f"Best on validation: <b>{html.escape(best)}</b> ({html.escape(str(row['kind']))}). Test {score} "
            f"{interval_text(row[score], row[f'{score}_lo'], row[f'{score}_hi'])}; against the base "
            f"{interval_text(row[against], row[f'{against}_lo'], row[f'{against}_hi'], signed=True)}, "
            f"{test} p = {row[f'{score}_p']:.3g}: {verdict}.")
    return best, text


def _merges_view(merges: pd.DataFrame, task: str) -> pd.DataFrame:
    score = "accuracy" if task == "classification" else "r2"
    view = pd.DataFrame({"method": merges["method"], "models": merges["num_models"]})
    if f"val_{score}_lo" in merges:
        view[f"val {score} [95%]"] = interval_column(merges, f"val_{score}")
        view[f"test {score} [95%]"] = interval_column(merges, f"test_{score}")
    if "params" in merges:
        view["params"] = merges["params"].str.replace(r'[{}"]', "", regex=True).str.replace(",", ", ")
    if "seconds" in merges:
        view["seconds"] = [f"{v:.2f}" for v in merges["seconds"]]
    if "ran_on" in merges:  # a Ray task's GPU, the stage's CPU, ...
        view["ran on"] = merges["ran_on"]
    view["members"] = merges["members"].str.replace(",", ", ")
    return view


def _trials_view(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    score = "val_accuracy" if task == "classification" else "val_r2"
    view = trials.drop(columns=[c for c in trials.columns if c == "checkpoint" or c.endswith(("_lo", "_hi"))
                                or c.startswith("point_")])
    if f"{score}_lo" in trials:
        view[score] = interval_column(trials, score)
        view["val_loss"] = interval_column(trials, "val_loss")
    if f"point_{score}_std" in trials and trials[f"point_{score}_std"].notna().any():
        view["mean ± std over seeds"] = [f"{m:.4f} ± {s:.4f}" if pd.notna(s) else "" for m, s in
                                         zip(trials[f"point_{score}_mean"], trials[f"point_{score}_std"], strict=True)]
    return view


def render_report(
    out_dir: str,
    history: pd.DataFrame,
    trials: pd.DataFrame,
    merges: pd.DataFrame,
    evaluation: pd.DataFrame,
    reliability: pd.DataFrame,
    interpolation: pd.DataFrame | None = None,
    merge_search: pd.DataFrame | None = None,
    pair: list[str] | None = None,
    grid_cells: pd.DataFrame | None = None,
) -> Path:
    """Write ``index.html`` and its figures into ``out_dir``; return the page's path.

    The page leads with the model picked on validation and its test score against the base
    (interval, p-value); every score in its tables carries its 95% interval. The score (accuracy,
    or R² for regression) is the evaluation table's; regression has no reliability diagram
    (``reliability`` is empty). ``pair`` names the interpolation's two end points.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = "classification" if "accuracy" in evaluation.columns else "regression"
    score = "accuracy" if task == "classification" else "r2"
    best, lead = headline(evaluation, trials, merges, task) if f"{score}_p" in evaluation else (None, "")
    figures = [training_curves(history, score, out / "training.png")]
    if f"{score}_lo" in evaluation:
        figures.append(score_intervals(evaluation, score, best, out / f"{score}.png"))
    if grid_cells is not None and len(grid_cells):
        figures.append(tune_heatmap(grid_cells, score, out / "tune_grid.png"))
    if interpolation is not None and len(interpolation):
        figures.append(interpolation_figure(interpolation, pair, out / "interpolation.png"))
    wide = []
    if len(reliability):
        wide.append(reliability_grid(reliability, list(dict.fromkeys(evaluation["model"])), out / "reliability.png"))
    sections = [
        ("Evaluation (test split)", evaluation_view(evaluation, task) if f"{score}_lo" in evaluation else evaluation),
        ("Merges", _merges_view(merges, task)),
        *([("Merge coefficient search (validation split)", merge_search)] if merge_search is not None and len(merge_search) else []),
        ("Tune trials (validation split)", _trials_view(trials, task)),
        ("Base model training", history),
    ]
    body = f"<p class='lead'>{lead}</p>" if lead else ""
    body += "<div class='figures'>" + "".join(f'<img src="{html.escape(f)}" alt="{html.escape(f)}">' for f in figures) + "</div>"
    body += "".join(f'<img class="wide" src="{html.escape(f)}" alt="{html.escape(f)}">' for f in wide)
    for title, frame in sections:
        body += (f"<h2>{html.escape(title)}</h2><div class='scroll'>"
                 + frame.to_html(index=False, float_format=lambda v: f"{v:.4f}") + "</div>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mixpipe report</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        ".lead{font-size:1.15em;background:#f3f6fa;padding:.8em 1em;border-left:4px solid #1f77b4}"
        ".figures img{max-width:49%;vertical-align:top}img.wide{max-width:100%}"
        ".scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px}"
        "td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
        "td{white-space:nowrap}td:last-child{white-space:normal;min-width:16em}</style>"
        f"</head><body><h1>mixpipe report</h1>{body}</body></html>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
