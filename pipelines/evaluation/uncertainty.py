"""How sure a score is: 95% intervals over the test samples, and paired tests against the base.

* Accuracy gets the Wilson score interval (Wilson, JASA 1927), which keeps its nominal coverage
  near 0 and 1 where the normal approximation and the percentile bootstrap fall short.
* Every other metric (NLL, ECE, Brier; R², MSE, RMSE, MAE) gets the percentile bootstrap over test
  samples (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13), with resamples
  drawn from a seeded ``torch.Generator``.
* Against the base, accuracy is compared with the exact McNemar test on the discordant pairs
  (McNemar, Psychometrika 1947; exact binomial form as in Dietterich, Neural Computation 1998);
  every other metric with the paired bootstrap: both models are scored on the *same* resamples,
  and the two-sided p-value is twice the smaller tail of the differences around 0.

All resampled metrics are vectorised over resamples: one ``[B, n]`` index matrix per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F

CONFIDENCE = 0.95
NUM_RESAMPLES = 1000
_CHUNK_ELEMENTS = 1 << 22  # indices per chunk of resamples: bounds memory at ~32 MiB of int64


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 (or n) successes the bound is exactly 0 (or 1); rounding alone would leave 1e-17
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_p(correct_a: torch.Tensor, correct_b: torch.Tensor) -> float:
    """Two-sided exact McNemar p-value of "a and b are equally accurate" on paired samples.

    Only discordant pairs count: ``b01`` (a right, b wrong) and ``b10``; under the null each is
    Binomial(b01 + b10, 1/2). Identical predictions give 1.
    """
    a, b = correct_a.bool(), correct_b.bool()
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers: no underflow for thousands of pairs


def paired_p(differences: torch.Tensor) -> float:
    """Two-sided paired-bootstrap p-value of "the difference is 0": twice the smaller tail of the
    resampled differences around 0, each tail counted as ``(k + 1) / (B + 1)`` (Davison & Hinkley,
    "Bootstrap Methods and their Application", 1997, §4.2), so B resamples never claim p = 0, only
    p <= 2 / (B + 1); capped at 1 (identical models give 1)."""
    d = differences.double()
    count = len(d)
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (count + 1))


def interval_text(value: float, lo: float, hi: float, signed: bool = False) -> str:
    """``0.8597 [0.8506, 0.8682]`` (``signed``: ``+0.0148 [+0.0088, +0.0210]``), as every table shows it."""
    spec = "+.4f" if signed else ".4f"
    return f"{value:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def interval_column(frame, column: str, signed: bool = False) -> list[str]:
    """:func:`interval_text` of ``column`` with its ``<column>_lo`` / ``<column>_hi`` for every row."""
    return [interval_text(v, lo, hi, signed) for v, lo, hi in
            zip(frame[column], frame[f"{column}_lo"], frame[f"{column}_hi"], strict=True)]


def percentile_interval(values: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` range of resampled values."""
    tail = (1 - confidence) / 2
    lo, hi = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return lo, hi


@dataclass(frozen=True)
class SampleTerms:
    """Per-sample quantities every metric of a task is a function of, so resampling is a gather."""

    task: str
    terms: dict[str, torch.Tensor]
    ece_bins: int = 15
    target_scale: float = 1.0

    @classmethod
    def of(cls, outputs: torch.Tensor, y: torch.Tensor, task: str, ece_bins: int = 15,
           target_scale: float = 1.0) -> SampleTerms:
        y = torch.as_tensor(y)
        if task == "classification":
            logits = outputs.double()
            probs = logits.softmax(-1)
            confidence, predicted = probs.max(-1)
            edges = torch.linspace(0, 1, ece_bins + 1, dtype=torch.float64)
            terms = {
                "correct": (predicted == y).double(),
                "nll": F.cross_entropy(logits, y, reduction="none"),
                "brier": ((probs - F.one_hot(y, probs.shape[-1]).double()) ** 2).sum(-1),
                "confidence": confidence,
                "bin": torch.bucketize(confidence, edges[1:-1], right=False),
            }
        else:
            prediction = outputs.double().reshape(y.shape)
            target = y.double()
            terms = {"error": prediction - target, "target": target}
        return cls(task, terms, ece_bins, target_scale)

    def __len__(self) -> int:
        return len(next(iter(self.terms.values())))

    def metrics(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every metric of the task on each resample: ``index`` is ``[B, n]`` -> ``{name: [B]}``."""
        t, n = self.terms, index.shape[1]
        if self.task == "classification":
            correct, confidence = t["correct"][index], t["confidence"][index]
            offsets = t["bin"][index] + self.ece_bins * torch.arange(len(index)).unsqueeze(1)
            size = len(index) * self.ece_bins
            # sum_b |B_b| * |acc_b - conf_b| = sum_b |sum_{i in b} correct_i - sum_{i in b} conf_i|
            gap = (torch.bincount(offsets.flatten(), correct.flatten(), size)
                   - torch.bincount(offsets.flatten(), confidence.flatten(), size))
            return {
                "accuracy": correct.mean(1),
                "nll": t["nll"][index].mean(1),
                "ece": gap.view(len(index), self.ece_bins).abs().sum(1) / n,
                "brier": t["brier"][index].mean(1),
            }
        error, target = t["error"][index], t["target"][index]
        sse = (error**2).sum(1)
        sst = ((target - target.mean(1, keepdim=True)) ** 2).sum(1)
        mse = sse / n
        return {
            "r2": torch.where(sst > 0, 1 - sse / sst.clamp(min=1e-300), torch.nan),
            "mse": mse * self.target_scale**2,
            "rmse": mse.sqrt() * self.target_scale,
            "mae": error.abs().mean(1) * self.target_scale,
        }


def bootstrap_seed(root: int, split: str) -> int:
    """The resamples' seed of a split: every stage that scores models on ``split`` uses it, so the
    intervals of one model agree between ``merges`` and ``evaluation``."""
    from pipelines.seeding import derive_seed

    return derive_seed(root, "bootstrap", split)


def resample_indices(n: int, num_resamples: int, seed: int) -> list[torch.Tensor]:
    """``num_resamples`` bootstrap resamples of ``range(n)`` in ``[B, n]`` chunks; the same
    ``(n, num_resamples, seed)`` gives the same resamples, so models scored on them are paired."""
    from pipelines.seeding import torch_generator

    generator = torch_generator(seed)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    chunks, left = [], num_resamples
    while left > 0:
        rows = min(per_chunk, left)
        chunks.append(torch.randint(0, n, (rows, n), generator=generator))
        left -= rows
    return chunks


def resampled_metrics(terms: SampleTerms, resamples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{metric: [num_resamples]}`` over the given resamples."""
    parts = [terms.metrics(index) for index in resamples]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def intervals(terms: SampleTerms, resampled: Mapping[str, torch.Tensor],
              confidence: float = CONFIDENCE) -> dict[str, float]:
    """``{<metric>_lo, <metric>_hi}``: Wilson for accuracy, the percentile bootstrap otherwise."""
    out = {}
    for name, values in resampled.items():
        if name == "accuracy":
            lo, hi = wilson_interval(int(terms.terms["correct"].sum().item()), len(terms), confidence)
        else:
            lo, hi = percentile_interval(values, confidence)
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out


def against(terms: SampleTerms, resampled: Mapping[str, torch.Tensor], reference: SampleTerms,
            reference_resampled: Mapping[str, torch.Tensor], confidence: float = CONFIDENCE) -> dict[str, float]:
    """The paired comparison with ``reference`` (both scored on the same resamples), per metric:
    ``<metric>_vs_base`` (the difference of the full-sample values, this minus reference),
    ``_lo``/``_hi`` (percentile interval of the resampled differences) and ``<metric>_p``
    (McNemar for accuracy, the paired bootstrap otherwise)."""
    full = {name: values for name, values in terms.metrics(torch.arange(len(terms)).unsqueeze(0)).items()}
    reference_full = reference.metrics(torch.arange(len(reference)).unsqueeze(0))
    out = {}
    for name, values in resampled.items():
        differences = values - reference_resampled[name]
        lo, hi = percentile_interval(differences, confidence)
        out[f"{name}_vs_base"] = (full[name] - reference_full[name]).item()
        out[f"{name}_vs_base_lo"], out[f"{name}_vs_base_hi"] = lo, hi
        out[f"{name}_p"] = (mcnemar_p(terms.terms["correct"], reference.terms["correct"]) if name == "accuracy"
                            else paired_p(differences))
    return out
