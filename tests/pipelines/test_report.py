import pandas as pd

from pipelines.evaluation.report import render_report
from tests.result_rows import evaluation_frame, merges_frame, trials_frame


def test_report_page_holds_every_table_and_figure(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "val_loss": [1.5, 0.5], "val_accuracy": [0.5, 0.875],
                            "lr": [0.1, 0.05], "samples_per_s": [10.0, 11.0], "epoch_seconds": [1.0, 1.0],
                            "world_size": [2, 2], "attempt": [0, 0]})
    trials = trials_frame(trial=["t00-mixup-a0.2"], method=["mixup"], alpha=[0.2], epochs_run=[2], stopped_early=[False],
                          val_loss=[0.4], val_accuracy=[0.9], checkpoint=["x"])
    merges = merges_frame(method=["uniform_soup"], params=['{"seed": 0}'], num_models=[1], members=["t00-mixup-a0.2"],
                          **{f"{s}_{m}": [0.95] for s in ("val", "test") for m in ("accuracy", "nll", "ece", "brier")},
                          seconds=[0.1], peak_memory_mib=[1.0], checkpoint=["y"])
    evaluation = evaluation_frame(model=["base", "t00-mixup-a0.2", "uniform_soup"], kind=["base", "trial", "merged"],
                                  num_samples=[8, 8, 8], accuracy=[0.625, 0.7, 0.75], nll=[0.9, 0.85, 0.8],
                                  ece=[0.1, 0.15, 0.2], brier=[0.5, 0.45, 0.4])
    evaluation = evaluation.assign(accuracy_lo=[0.3, 0.35, 0.4], accuracy_hi=[0.85, 0.9, 0.95], accuracy_p=[1.0, 0.5, 0.03125])
    reliability = pd.DataFrame({"model": ["base", "uniform_soup"], "bin": [13, 14], "lower": [13 / 15, 14 / 15],
                                "upper": [14 / 15, 1.0], "count": [8, 8], "confidence": [0.9, 0.95], "accuracy": [0.625, 0.75]})
    curve = pd.DataFrame({"t": [0.0, 0.5, 1.0], "val_loss": [0.4, 0.5, 0.45], "test_loss": [0.41, 0.52, 0.44]})
    search = pd.DataFrame({"method": ["ties"], "params": ['{"density": 0.2}'], "val_loss": [0.3], "val_accuracy": [0.9375],
                           "chosen": [True]})
    cells = pd.DataFrame({"method": ["mixup"], "alpha": [0.2], "score": [0.9], "score_std": [None], "seeds": [1],
                          "epochs_run": [2], "label": ["0.900"], "dark": [False]})
    page = render_report(str(tmp_path / "report"), history, trials, merges, evaluation, reliability, curve, search,
                         ["t00-mixup-a0.2", "t01-mixup-a1"], cells)
    html = page.read_text()
    assert "Merge coefficient search" in html and "0.9375" in html
    # the merge wins on validation (0.95 > 0.9): the headline names it, its interval and McNemar's p
    assert "Best on validation: <b>uniform_soup</b> (merged)" in html
    assert "0.7500 [0.4000, 0.9500]" in html and "+0.1250 [+0.1250, +0.1250]" in html and "p = 0.0312" in html
    assert "larger than the noise" in html
    for figure in ("training.png", "accuracy.png", "reliability.png", "interpolation.png", "tune_grid.png"):
        png = tmp_path / "report" / figure
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f'src="{figure}"' in html
    for value in ("0.8750", "0.6250 [0.3000, 0.8500]", "t00-mixup-a0.2", "uniform_soup", "seed: 0", "stage cpu"):
        assert value in html
    assert "checkpoint" not in html  # local paths stay out of the page
    assert "overflow-x:auto" in html  # wide tables scroll inside the page instead of running off it


def test_mixed_examples_grid_is_a_png_of_the_rows():
    import io

    import numpy as np
    from PIL import Image

    from pipelines.evaluation.report import mixed_examples_png

    rng = np.random.default_rng(0)
    for shape in [(1, 8, 8), (3, 6, 6), (2, 40)]:
        frame = pd.DataFrame({"x": [rng.normal(size=int(np.prod(shape))).astype(np.float32) for _ in range(10)],
                              "y": range(10), "y_partner": range(10, 20), "lam": np.linspace(0, 1, 10)})
        png = mixed_examples_png(frame, shape, "test", count=16)
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.width > image.height  # 8 columns, 2 rows


def test_regression_report_uses_r2_and_has_no_reliability_diagram(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.6], "val_loss": [0.9, 0.55], "val_r2": [0.1, 0.4375],
                            "lr": [0.1, 0.05], "samples_per_s": [10.0, 11.0], "epoch_seconds": [1.0, 1.0],
                            "world_size": [2, 2], "attempt": [0, 0]})
    trials = trials_frame("val_r2", trial=["t00-cmixup-a1"], method=["cmixup"], alpha=[1.0], epochs_run=[2],
                          stopped_early=[False], val_loss=[0.5], val_r2=[0.45], checkpoint=["x"])
    merges = merges_frame("regression", method=["uniform_soup"], params=["{}"], num_models=[1], members=["t00-cmixup-a1"],
                          **{f"{s}_{m}": [0.3] for s in ("val", "test") for m in ("r2", "mse", "rmse", "mae")},
                          seconds=[0.1], peak_memory_mib=[1.0], checkpoint=["y"])
    evaluation = evaluation_frame("regression", model=["base", "t00-cmixup-a1", "uniform_soup"], kind=["base", "trial", "merged"],
                                  num_samples=[8, 8, 8], r2=[-0.25, 0.4, 0.5], mse=[2.0, 1.1, 1.0], rmse=[2.0**0.5, 1.05, 1.0],
                                  mae=[1.0, 0.9, 0.8])
    reliability = pd.DataFrame(columns=["model", "bin", "lower", "upper", "count", "confidence", "accuracy"])
    page = render_report(str(tmp_path / "report"), history, trials, merges, evaluation, reliability)
    html = page.read_text()
    assert 'src="r2.png"' in html and 'src="training.png"' in html and "reliability" not in html
    assert "0.4375" in html and "-0.2500" in html
    assert "Best on validation: <b>t00-cmixup-a1</b> (trial)" in html and "paired bootstrap p = 1" in html
