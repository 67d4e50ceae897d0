"""Samples/s of the vectorised mixers against a per-sample Python loop of the same method.

Usage:
    python benchmarks/bench_mixing.py [--batch 256] [--repeats 30]

The baseline applies per-element λ the way timm's ``Mixup._mix_elem`` does: a Python loop over
the batch, one λ (and for CutMix one box) per sample. Both run in this process on the same
256 x 3 x 32 x 32 float32 batch; the table prints the ratio.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from pipelines.mixing import get_mixer
from pipelines.seeding import torch_generator


def loop_mixup(x: torch.Tensor, alpha: float, rng: random.Random) -> torch.Tensor:
    out = x.clone()
    b = len(x)
    partner = list(range(b))
    rng.shuffle(partner)
    for i in range(b):
        lam = rng.betavariate(alpha, alpha)
        out[i] = x[i] * lam + x[partner[i]] * (1 - lam)
    return out


def loop_cutmix(x: torch.Tensor, alpha: float, rng: random.Random) -> torch.Tensor:
    out = x.clone()
    b, _, h, w = x.shape
    partner = list(range(b))
    rng.shuffle(partner)
    for i in range(b):
        lam = rng.betavariate(alpha, alpha)
        ratio = math.sqrt(1 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = rng.randrange(h), rng.randrange(w)
        y0, y1 = max(cy - ch // 2, 0), min(cy - ch // 2 + ch, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx - cw // 2 + cw, w)
        out[i, :, y0:y1, x0:x1] = x[partner[i], :, y0:y1, x0:x1]
    return out


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the comparison is about Python overhead, not thread count
    x = torch.randn(args.batch, 3, 32, 32, generator=torch_generator(0))
    y = torch.randint(0, 10, (args.batch,), generator=torch_generator(1))
    loops = {"mixup": loop_mixup, "cutmix": loop_cutmix}
    print(f"batch {args.batch} x 3 x 32 x 32 float32, elem mode, 1 thread, best of {args.repeats}")
    print(f"{'method':8s} {'vectorised samples/s':>22s} {'loop samples/s':>16s} {'speed-up':>9s}")
    for name, loop in loops.items():
        mixer = get_mixer(name, alpha=1.0, mode="elem", prob=1.0)
        generator = torch_generator(2)
        rng = random.Random(2)
        fast = best_seconds(lambda m=mixer, g=generator: m(x, y, generator=g), args.repeats)
        slow = best_seconds(lambda f=loop, r=rng: f(x, 1.0, r), args.repeats)
        print(f"{name:8s} {args.batch / fast:22,.0f} {args.batch / slow:16,.0f} {slow / fast:8.1f}x")


if __name__ == "__main__":
    main()
