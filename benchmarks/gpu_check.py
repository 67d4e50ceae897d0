"""The GPU paths, checked and timed in one run (under 8 minutes on one GPU).

Usage:
    python benchmarks/gpu_check.py [--device cuda|cpu] [--train-samples 8192] [--epochs 5] [--batch 128] [--model M]

(a) every mixer on the device against the mixing contract: shapes, dtype and device of what it
    returns, partners a permutation, λ in [0, 1], a mask method's own fraction equal to its λ, the
    draws made by a generator on the device and repeated exactly by the same seed; manifold mixup
    through the model under bf16 autocast. With deterministic kernels on, as ``train.deterministic``.
(b) a 1-GPU Ray Train run of the CIFAR ResNet-18 with bf16 autocast on generated CIFAR-shaped data
    (a few hundred steps): the loss decreases, a checkpoint is written, and a run stopped one epoch
    early resumes from it to the same history.
(c) samples/s of the per-sample (elem) mixers on the device, against timm's ``Mixup`` in elem mode
    where timm is installed (``pip install timm``: benchmark only, it needs torchvision) and always
    against the per-sample Python loop of ``bench_mixing.py``.
(d) a streamed TIES merge (tensors read one at a time from safetensors files) on the device
    against the same merge on CPU: time and the largest difference.

It prints one table and exits 1 if a check failed. ``--device cpu`` runs the same code on CPU
(what the test suite does, at a small size).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipelines.mixing import MIXERS, MixingSpec, get_mixer, mixing_hidden
from pipelines.seeding import torch_generator
from pipelines.training.determinism import use_deterministic_kernels

MASK_METHODS = ("cutmix", "fmix", "saliencymix")


@dataclass
class Row:
    check: str
    ok: bool
    detail: str


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (a) the mixing contract on the device ---------------------------------------------------


def contract(name: str, device: torch.device, batch: int = 64) -> str:
    """Check one mixer's contract on ``device``; what was checked, or raise AssertionError."""
    x = torch.randn(batch, 3, 32, 32, generator=torch_generator(0), dtype=torch.float32).to(device)
    y = torch.randint(0, 10, (batch,), generator=torch_generator(1)).to(device)
    mixer = get_mixer(name, alpha=1.0, mode="elem", prob=1.0)
    out = mixer(x, y, generator=torch_generator(2, device))
    assert out.x.shape == x.shape and out.x.dtype == x.dtype and out.x.device == x.device, "shape/dtype/device"
    assert out.index.device == x.device and out.lam.device == x.device, "index and lam on the device"
    assert out.lam.dtype == torch.float32 and bool(((out.lam >= 0) & (out.lam <= 1)).all()), "lam in [0, 1]"
    if type(mixer).partners_are_a_permutation:
        assert sorted(out.index.tolist()) == list(range(batch)), "partners a permutation"
    again = mixer(x, y, generator=torch_generator(2, device))
    assert torch.equal(out.x, again.x) and torch.equal(out.lam, again.lam), "same seed, same mix"
    checked = "shapes, device, lam range, seed"
    if name in MASK_METHODS:
        own = out.x == x
        assert bool((own | (out.x == x[out.index])).all()), "each element from self or partner"
        distinct = (x != x[out.index]).any(dim=1).flatten(1).all(1)
        own_fraction = 1 - (~own).any(dim=1).flatten(1).sum(1).double() / (32 * 32)
        assert torch.equal(out.lam[distinct], own_fraction[distinct].float()), "own fraction = lam"
        checked += ", own fraction = lam"
    if name == "mixup":
        lam = out.lam.double().view(-1, 1, 1, 1)
        exact = lam * x.double() + (1 - lam) * x[out.index].double()
        # lerp in float32: a few ulps of the larger operand (|x| < 6 here); 1e-5 bounds 4 ulps of 8
        assert float((out.x.double() - exact).abs().max()) < 1e-5, "mixup is the convex combination"
        checked += ", convex combination"
    return checked


def manifold_under_autocast(device: torch.device) -> str:
    """Manifold mixup through the CIFAR ResNet-18 under bf16 autocast: finite logits and a mix
    point that saw bf16 activations mixed with the float32 λ."""
    from pipelines.models import build_model, mix_points

    model = build_model("resnet18_cifar", (3, 32, 32), 10, seed=0).to(device)
    x = torch.randn(16, 3, 32, 32, generator=torch_generator(3)).to(device)
    y = torch.randint(0, 10, (16,), generator=torch_generator(4)).to(device)
    mixer = MixingSpec("manifold_mixup", alpha=1.0, options={"layers": ["layer2"]}).build()
    out = mixer(x, y, generator=torch_generator(5, device))
    use_amp = device.type == "cuda"
    with mixing_hidden(mix_points(model), out), torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
        logits = model(out.x)
    assert torch.isfinite(logits.float()).all(), "finite logits"
    assert out.lam.dtype == torch.float32
    return f"logits {tuple(logits.shape)} {str(logits.dtype).removeprefix('torch.')}"


def check_mixers(device: torch.device) -> list[Row]:
    rows = []
    use_deterministic_kernels(True)
    try:
        for name in MIXERS.names():
            if name == "manifold_mixup":
                continue
            try:
                rows.append(Row(f"(a) {name}", True, contract(name, device)))
            except (AssertionError, RuntimeError) as error:
                rows.append(Row(f"(a) {name}", False, f"{type(error).__name__}: {error}"[:200]))
        try:
            rows.append(Row("(a) manifold_mixup + bf16", True, manifold_under_autocast(device)))
        except (AssertionError, RuntimeError) as error:
            rows.append(Row("(a) manifold_mixup + bf16", False, f"{type(error).__name__}: {error}"[:200]))
    finally:
        use_deterministic_kernels(False)
    return rows


# --- (b) a Ray Train run of the CIFAR ResNet-18 ------------------------------------------------


def cifar_shaped(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images a ResNet can learn: a fixed random pattern and colour per class, plus noise (the
    colour survives global pooling, so even a small CNN learns it within a few epochs)."""
    generator = torch_generator(seed)
    patterns = torch.randn(10, 3, 32, 32, generator=generator) + torch.randn(10, 3, 1, 1, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    images = patterns[labels] + torch.randn(samples, 3, 32, 32, generator=generator)
    return images.numpy(), labels.numpy()


def check_training(device: torch.device, samples: int, epochs: int, batch: int, model: str) -> list[Row]:
    from pipelines.cluster import ray_session
    from pipelines.config import OptimParams
    from pipelines.data import ArrayDataset
    from pipelines.models import ModelCard
    from pipelines.training import TrainJob, run_training

    x, y = cifar_shaped(samples + 1024, seed=0)
    ids = np.arange(len(y))
    train = ArrayDataset(x[:samples], y[:samples], ids[:samples], 10)
    val = ArrayDataset(x[samples:], y[samples:], ids[samples:], 10)
    use_gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="mixpipe-gpu-check-") as folder:
        job = TrainJob(
            run_name="gpu-check", card=ModelCard(model, (3, 32, 32), 10, seed=0), epochs=epochs,
            batch_size=batch, optim=OptimParams(lr=0.05, warmup_epochs=1), mixing=MixingSpec("cutmix", alpha=1.0),
            seed=1, storage_path=str(Path(folder) / "runs"), num_workers=1, cpus_per_worker=1.0, use_gpu=use_gpu,
        )
        with ray_session(num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="mp-ray-", dir="/tmp")):
            started = time.perf_counter()
            stopped = run_training(replace(job, stop_after_epoch=epochs - 1), train, val)
            resumed = run_training(job, train, val)
            seconds = time.perf_counter() - started
    history = resumed.history
    steps = (samples // batch) * epochs
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    same_prefix = [r["train_loss"] for r in history[: epochs - 1]] == [r["train_loss"] for r in stopped.history]
    rate = max(r["samples_per_s"] for r in history)
    return [
        Row("(b) loss decreases", last < first, f"{model}: train loss {first:.3f} -> {last:.3f} over {steps} steps, "
                                                f"bf16={use_gpu}, {rate:,.0f} samples/s, {seconds:.0f}s"),
        Row("(b) checkpoint written", bool(stopped.checkpoint_path) and bool(resumed.checkpoint_path),
            Path(resumed.checkpoint_path).name),
        Row("(b) resume", len(history) == epochs and same_prefix and history[-1]["epoch"] == epochs,
            f"stopped at epoch {len(stopped.history)}, resumed to {history[-1]['epoch']} with the same history"),
    ]


# --- (c) mixer throughput ----------------------------------------------------------------------


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        synchronise(device)
        started = time.perf_counter()
        fn()
        synchronise(device)
        best = min(best, time.perf_counter() - started)
    return best


def _loops() -> dict[str, Callable]:
    """bench_mixing.py's per-sample loops (the shape of timm's ``_mix_elem``)."""
    path = Path(__file__).with_name("bench_mixing.py")
    spec = importlib.util.spec_from_file_location("bench_mixing", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_mixing", module)
    spec.loader.exec_module(module)
    return {"mixup": module.loop_mixup, "cutmix": module.loop_cutmix, "fmix": module.loop_fmix,
            "resizemix": module.loop_resizemix, "saliencymix": module.loop_saliencymix}


def _timm_mixup(name: str, batch: int):
    """timm's ``Mixup`` in elem mode for mixup or cutmix, or None where timm is not installed."""
    try:
        from timm.data import Mixup
    except ImportError:
        return None
    if name not in ("mixup", "cutmix"):
        return None
    alphas = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0} if name == "mixup" else {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}
    return Mixup(**alphas, mode="elem", label_smoothing=0.0, num_classes=10)


def check_throughput(device: torch.device, batch: int, repeats: int) -> list[Row]:
    x = torch.randn(batch, 3, 32, 32, generator=torch_generator(0)).to(device)
    y = torch.randint(0, 10, (batch,), generator=torch_generator(1)).to(device)
    rows = []
    for name, loop in _loops().items():
        mixer = get_mixer(name, alpha=1.0, mode="elem", prob=1.0)
        generator = torch_generator(2, device)
        ours = best_seconds(lambda m=mixer, g=generator: m(x, y, generator=g), device, repeats)
        rng = random.Random(2)
        looped = best_seconds(lambda f=loop, r=rng: f(x, 1.0, r), device, max(3, repeats // 5))
        detail = f"{batch / ours:,.0f} samples/s; loop {batch / looped:,.0f} ({looped / ours:.1f}x)"
        timm = _timm_mixup(name, batch)
        if timm is not None:
            theirs = best_seconds(lambda t=timm: t(x.clone(), y), device, repeats)
            detail += f"; timm {batch / theirs:,.0f} ({theirs / ours:.1f}x)"
        elif name in ("mixup", "cutmix"):
            detail += "; timm not installed"
        rows.append(Row(f"(c) {name} elem", True, detail))
    return rows


# --- (d) a streamed TIES merge on the device and on CPU ----------------------------------------


class OnDevice(Mapping[str, torch.Tensor]):
    """A state dict read one tensor at a time, each moved to ``device`` as it is read."""

    def __init__(self, inner: Mapping[str, torch.Tensor], device: torch.device) -> None:
        self.inner, self.device = inner, device

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.inner[name].to(self.device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def check_merge(device: torch.device, models: int, tensors: int, side: int) -> list[Row]:
    from safetensors.torch import save_file

    from pipelines.merging import merge
    from pipelines.merging.lazy import SafetensorsFile

    with tempfile.TemporaryDirectory(prefix="mixpipe-gpu-merge-") as folder:
        generator = torch_generator(7)
        base = {f"t{i:03d}": torch.randn(side, side, generator=generator) for i in range(tensors)}
        save_file(base, f"{folder}/base.safetensors")
        for m in range(models):
            save_file({k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in base.items()},
                      f"{folder}/m{m}.safetensors")
        paths = [f"{folder}/m{m}.safetensors" for m in range(models)]

        def run(on: torch.device) -> tuple[dict[str, torch.Tensor], float]:
            states = [OnDevice(SafetensorsFile(p), on) for p in paths]
            synchronise(on)
            started = time.perf_counter()
            merged = merge("ties", states, OnDevice(SafetensorsFile(f"{folder}/base.safetensors"), on), density=0.2)
            synchronise(on)
            return {k: v.cpu() for k, v in merged.items()}, time.perf_counter() - started

        on_cpu, cpu_s = run(torch.device("cpu"))
        on_device, device_s = run(device)
    worst = max(float((on_cpu[k] - on_device[k]).abs().max()) for k in on_cpu)
    # both merge in float64 and round once to float32: only the order of float64 sums may differ,
    # so they agree to within one float32 ulp of the largest weight (|w| < 8 here: 2^-20)
    size = models * tensors * side * side * 4 / 2**20
    return [Row("(d) streamed TIES", worst <= 2.0**-20,
                f"{models} x {size / models:.2f} MiB: {device.type} {device_s:.2f}s, cpu {cpu_s:.2f}s "
                f"({cpu_s / device_s:.1f}x); max |diff| {worst:.1e}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--train-samples", type=int, default=8192, help="(b) training set size (default 8192)")
    parser.add_argument("--epochs", type=int, default=5, help="(b) epochs (default 5: 320 steps at batch 128)")
    parser.add_argument("--batch", type=int, default=128, help="(b) per-worker batch (default 128)")
    parser.add_argument("--model", default="resnet18_cifar", help="(b) train.model (default resnet18_cifar)")
    parser.add_argument("--mix-batch", type=int, default=256, help="(c) batch of the throughput rows (default 256)")
    parser.add_argument("--repeats", type=int, default=20, help="(c) timing repeats, best of (default 20)")
    parser.add_argument("--merge-tensors", type=int, default=24, help="(d) tensors per model (default 24 x 1024^2)")
    parser.add_argument("--merge-side", type=int, default=1024)
    parser.add_argument("--skip", action="append", default=[], choices=["a", "b", "c", "d"], help="leave a part out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    parts = {
        "a": lambda: check_mixers(device),
        "b": lambda: check_training(device, args.train_samples, args.epochs, args.batch, args.model),
        "c": lambda: check_throughput(device, args.mix_batch, args.repeats),
        "d": lambda: check_merge(device, 3, args.merge_tensors, args.merge_side),
    }
    for key, part in parts.items():
        if key not in args.skip:
            rows.extend(part())
            print(f"gpu_check: part ({key}) done at {time.perf_counter() - started:.0f}s", flush=True)
    width = max(len(r.check) for r in rows)
    print(f"\n{'check':{width}s}  {'':4s}  detail")
    for row in rows:
        print(f"{row.check:{width}s}  {'ok' if row.ok else 'FAIL':4s}  {row.detail}")
    failed = [r.check for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} ok in {time.perf_counter() - started:.0f}s" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
