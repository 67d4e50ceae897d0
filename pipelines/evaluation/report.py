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
    figure, axes = plt.subplots(
        lines, columns, figsize=(1.6 * columns, 1.9 * lines + 0.4), squeeze=False, layout="constrained"
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
    figure.savefig(buffer, format="png", dpi=110)
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


def score_bars(evaluation: pd.DataFrame, score: str, path: Path) -> str:
    colours = {"base": "tab:gray", "trial": "tab:blue", "merged": "tab:orange"}
    ordered = evaluation.sort_values(score)
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(ordered) + 1.2))
    axis.barh(ordered["model"], ordered[score], color=[colours[k] for k in ordered["kind"]])
    low = float(ordered[score].min())
    axis.set(xlabel=f"test {score}", xlim=(min(max(0.0, low - 0.05), low - 0.05 * (low < 0)), 1.0), title=f"Test {score} by model")
    return _save(figure, path)


def reliability_diagram(reliability: pd.DataFrame, models: list[str], path: Path) -> str:
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1)
    for name in models:
        rows = reliability[(reliability["model"] == name) & (reliability["count"] > 0)]
        axis.plot(rows["confidence"], rows["accuracy"], marker="o", label=name)
    axis.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test)", xlim=(0, 1), ylim=(0, 1))
    axis.legend(fontsize=8)
    return _save(figure, path)


def interpolation_figure(curve: pd.DataFrame, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for split in ("val", "test"):
        if f"{split}_loss" in curve:
            axis.plot(curve["t"], curve[f"{split}_loss"], marker=".", label=split)
    axis.set(xlabel="t (0: first model, 1: second)", ylabel="loss", title="Loss along the line between the two best trials")
    axis.legend()
    return _save(figure, path)


def render_report(
    out_dir: str,
    history: pd.DataFrame,
    trials: pd.DataFrame,
    merges: pd.DataFrame,
    evaluation: pd.DataFrame,
    reliability: pd.DataFrame,
    interpolation: pd.DataFrame | None = None,
    merge_search: pd.DataFrame | None = None,
) -> Path:
    """Write ``index.html`` and its figures into ``out_dir``; return the page's path.

    The score (accuracy, or R² for regression) is the evaluation table's; regression has no
    reliability diagram (``reliability`` is empty).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    highlighted = ["base", *merges["method"]]
    score = "accuracy" if "accuracy" in evaluation.columns else "r2"
    figures = [
        training_curves(history, score, out / "training.png"),
        score_bars(evaluation, score, out / f"{score}.png"),
    ]
    if len(reliability):
        figures.append(reliability_diagram(reliability, highlighted, out / "reliability.png"))
    if interpolation is not None and len(interpolation):
        figures.append(interpolation_figure(interpolation, out / "interpolation.png"))
    sections = [
        ("Evaluation (test split)", evaluation),
        ("Merges", merges.drop(columns=["checkpoint"])),
        *([("Merge coefficient search (validation split)", merge_search)] if merge_search is not None and len(merge_search) else []),
        ("Tune trials", trials.drop(columns=["checkpoint"])),
        ("Base model training", history),
    ]
    body = "".join(f'<img src="{html.escape(f)}" alt="{html.escape(f)}">' for f in figures)
    for title, frame in sections:
        body += f"<h2>{html.escape(title)}</h2>" + frame.to_html(index=False, float_format=lambda v: f"{v:.4f}")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>mixpipe report</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:48%;margin:.5em}"
        "table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>mixpipe report</h1>{body}</body></html>"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
