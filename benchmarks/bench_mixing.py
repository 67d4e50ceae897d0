"""Samples/s of the vectorised mixers against a per-sample Python loop of the same method.

Usage:
    python benchmarks/bench_mixing.py [--batch 256] [--repeats 30] [--threads 1]

The baseline applies per-element λ the way timm's ``Mixup._mix_elem`` does: a Python loop over
the batch, one λ (and one box, Fourier mask, resize or saliency map) per sample. Both run in this process on the same
256 x 3 x 32 x 32 batch, float32 and uint8. Beside that ratio the table prints each method's time over
``x.clone()`` of the batch (one read and one write of it, the memory floor of any method that returns a new
batch; the two timed in turn), with the native kernels (the default on CPU) and eager: the same draws in
Python and the PyTorch ops (the fallback without a C compiler).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F

from pipelines.mixing import get_mixer
from pipelines.seeding import torch_generator


def per_sample_loop(x: torch.Tensor, alpha: float, rng: random.Random, step) -> torch.Tensor:
    """The baseline's shape: a Python loop over the batch, one partner and one λ per sample;
    ``step(out, i, partner, lam)`` mixes sample ``i``."""
    out = x.clone()
    partner = list(range(len(x)))
    rng.shuffle(partner)
    for i in range(len(x)):
        step(out, i, partner[i], rng.betavariate(alpha, alpha))
    return out


def paste_centred_box(out: torch.Tensor, i: int, source: torch.Tensor, lam: float, cy: int, cx: int) -> None:
    """CutMix's box of area 1 - lam around (cy, cx), clipped, copied from ``source`` into ``out[i]``."""
    h, w = out.shape[-2:]
    ratio = math.sqrt(1 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    y0, y1 = max(cy - ch // 2, 0), min(cy - ch // 2 + ch, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx - cw // 2 + cw, w)
    out[i, :, y0:y1, x0:x1] = source[:, y0:y1, x0:x1]


def loop_mixup(x: torch.Tensor, alpha: float, rng: random.Random) -> torch.Tensor:
    def step(out, i, j, lam):
        out[i] = x[i] * lam + x[j] * (1 - lam)

    return per_sample_loop(x, alpha, rng, step)


def loop_cutmix(x: torch.Tensor, alpha: float, rng: random.Random) -> torch.Tensor:
    h, w = x.shape[-2:]

    def step(out, i, j, lam):
        paste_centred_box(out, i, x[j], lam, rng.randrange(h), rng.randrange(w))

    return per_sample_loop(x, alpha, rng, step)


def loop_fmix(x: torch.Tensor, alpha: float, rng: random.Random, decay_power: float = 3.0) -> torch.Tensor:
    """One Fourier mask per sample, built and binarised sample by sample."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    scale = torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / max(h, w)) ** -decay_power
    generator = torch.Generator().manual_seed(rng.randrange(2**31))

    def step(out, i, j, lam):
        real = torch.randn(scale.shape, generator=generator, dtype=torch.float64)
        imag = torch.randn(scale.shape, generator=generator, dtype=torch.float64)
        noise = torch.fft.irfftn(torch.complex(real * scale, imag * scale), s=(h, w)).flatten()
        keep = torch.zeros(h * w, dtype=torch.bool)
        keep[noise.argsort(descending=True)[: round(lam * h * w)]] = True
        out[i] = torch.where(keep.view(1, h, w), x[i], x[j])

    return per_sample_loop(x, alpha, rng, step)


def loop_resizemix(x: torch.Tensor, alpha: float, rng: random.Random, scope=(0.1, 0.8)) -> torch.Tensor:
    h, w = x.shape[-2:]

    def step(out, i, j, lam):
        tau = scope[0] + (scope[1] - scope[0]) * lam
        ph, pw = max(1, round(tau * h)), max(1, round(tau * w))
        y0, x0 = rng.randrange(h - ph + 1), rng.randrange(w - pw + 1)
        patch = F.interpolate(x[j].unsqueeze(0), size=(ph, pw), mode="bilinear", align_corners=False)[0]
        out[i, :, y0 : y0 + ph, x0 : x0 + pw] = patch

    return per_sample_loop(x, alpha, rng, step)


def loop_saliencymix(x: torch.Tensor, alpha: float, rng: random.Random) -> torch.Tensor:
    w = x.shape[-1]

    def step(out, i, j, lam):
        spectrum = torch.fft.fft2(x[j].mean(0))
        log_amplitude = torch.log(spectrum.abs().clamp(min=1e-8))
        residual = log_amplitude - F.avg_pool2d(log_amplitude[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
        saliency = torch.fft.ifft2(torch.polar(torch.exp(residual), torch.angle(spectrum))).abs() ** 2
        saliency = F.avg_pool2d(saliency[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
        cy, cx = divmod(int(saliency.argmax()), w)
        paste_centred_box(out, i, x[j], lam, cy, cx)

    return per_sample_loop(x, alpha, rng, step)


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_against(fn, floor, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` timed calls of ``fn`` and of ``floor``, called in turn, so that
    both see the same machine (a shared VM's speed drifts between runs of the table)."""
    fn(), floor()
    times, floors = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        middle = time.perf_counter()
        floor()
        floors.append(time.perf_counter() - middle)
        times.append(middle - start)
    return min(times), min(floors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (default 1: per-sample overhead, not core count)")
    parser.add_argument("--loop-repeats", type=int, default=5, help="timed calls of the per-sample loops (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loops = {"mixup": loop_mixup, "cutmix": loop_cutmix, "fmix": loop_fmix, "resizemix": loop_resizemix,
             "saliencymix": loop_saliencymix}
    print(f"batch {args.batch} x 3 x 32 x 32, elem mode, {args.threads} thread(s), best of {args.repeats}; "
          "x clone: time over x.clone()'s (the memory floor), timed in turn with it; the default runs "
          "pipelines/mixing/native.c's kernels (MIXPIPE_FUSE), eager: the draws in Python and the PyTorch ops")
    print(f"{'method':12s} {'dtype':7s} {'samples/s':>11s} {'x clone':>8s} {'eager x clone':>14s} {'loop samples/s':>15s} {'vs loop':>8s}")
    for dtype in (torch.float32, torch.uint8):
        if dtype == torch.uint8:
            x = torch.randint(0, 256, (args.batch, 3, 32, 32), generator=torch_generator(0), dtype=torch.uint8)
        else:
            x = torch.randn(args.batch, 3, 32, 32, generator=torch_generator(0))
        y = torch.randint(0, 10, (args.batch,), generator=torch_generator(1))
        floor = best_seconds(lambda: x.clone(), args.repeats)
        print(f"{'x.clone()':12s} {str(dtype).removeprefix('torch.'):7s} {args.batch / floor:11,.0f} {1:8.2f}")
        for name, loop in loops.items():
            fused = get_mixer(name, alpha=1.0, mode="elem", prob=1.0)
            eager = get_mixer(name, alpha=1.0, mode="elem", prob=1.0, fuse=False)
            clone = lambda: x.clone()  # noqa: E731
            fast, floor = best_against(lambda m=fused, g=torch_generator(2): m(x, y, generator=g), clone, args.repeats)
            plain, plain_floor = best_against(lambda m=eager, g=torch_generator(2): m(x, y, generator=g), clone, args.repeats)
            rng = random.Random(2)
            slow = best_seconds(lambda f=loop, r=rng: f(x.float() if dtype == torch.uint8 else x, 1.0, r), args.loop_repeats)
            print(f"{name:12s} {str(dtype).removeprefix('torch.'):7s} {args.batch / fast:11,.0f} {fast / floor:8.2f} "
                  f"{plain / plain_floor:14.2f} {args.batch / slow:15,.0f} {slow / fast:7.1f}x")


if __name__ == "__main__":
    main()
