"""Seconds and peak memory of merging from safetensors files, streamed against load-everything.

Usage:
    python benchmarks/bench_merging.py [--models 8] [--tensors 25] [--side 1000] [--methods task_arithmetic ties]

Writes a base and ``--models`` fine-tunes of ``--tensors`` float32 tensors of ``side x side``
(8 x 25M parameters by default, 100 MB a file) to a temporary folder, then merges them in a
fresh child process per variant and reads the child's peak RSS from the kernel (``wait4``):

- streamed: ``merge(method, paths, base_path)``; tensors are read one name at a time;
- in memory: every file loaded with ``safetensors.torch.load_file`` first, then the same merge.

Both write the merged model. The ``imports only`` row is a child that imports the same modules and stops: the
floor both share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

CHILD = "--child"


def write_models(folder: str, models: int, tensors: int, side: int) -> tuple[str, list[str]]:
    generator = torch.Generator().manual_seed(0)
    base = {f"layer{i:02d}.weight": torch.randn(side, side, generator=generator) for i in range(tensors)}
    base_path = os.path.join(folder, "base.safetensors")
    save_file(base, base_path)
    paths = []
    for m in range(models):
        tuned = {name: tensor + 0.01 * torch.randn(side, side, generator=generator) for name, tensor in base.items()}
        paths.append(os.path.join(folder, f"model{m}.safetensors"))
        save_file(tuned, paths[-1])
        del tuned
    return base_path, paths


def child(mode: str, method: str, folder: str, base_path: str, paths: list[str]) -> None:
    from pipelines.merging import merge
    from pipelines.models.checkpoints import state_dict_bytes

    if mode == "import":  # the floor: the same imports, no merge
        return
    started = time.perf_counter()
    if mode == "streamed":
        merged = merge(method, paths, base_path)
    else:
        merged = merge(method, [load_file(p) for p in paths], load_file(base_path))
    with open(os.path.join(folder, f"out-{mode}-{method}.safetensors"), "wb") as handle:
        handle.write(state_dict_bytes(merged))
    print(f"{time.perf_counter() - started:.3f}")


def measure(mode: str, method: str, folder: str, base_path: str, paths: list[str]) -> tuple[float, float]:
    """Seconds (as the child timed its merge and write) and the child's peak RSS in MiB."""
    process = subprocess.Popen(
        [sys.executable, __file__, CHILD, mode, method, folder, base_path, *paths], stdout=subprocess.PIPE, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.stdout.close()
    if status != 0:
        raise RuntimeError(f"{mode} {method} failed with status {status}")
    seconds = float(output.strip().splitlines()[-1]) if output.strip() else 0.0
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        mode, method, folder, base_path, *paths = sys.argv[2:]
        child(mode, method, folder, base_path, paths)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--tensors", type=int, default=25)
    parser.add_argument("--side", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mixpipe-merge-bench-") as folder:
        base_path, paths = write_models(folder, args.models, args.tensors, args.side)
        size = os.path.getsize(paths[0]) / 2**20
        print(f"{args.models} models + base, {args.tensors} x {args.side}x{args.side} float32 "
              f"({args.tensors * args.side**2 / 1e6:.0f}M parameters, {size:.0f} MiB a file)")
        _, floor = measure("import", "-", folder, base_path, paths)
        print(f"{'method':16s} {'mode':10s} {'seconds':>8s} {'peak RSS MiB':>13s} {'above floor':>12s}")
        print(f"{'imports only':16s} {'-':10s} {'-':>8s} {floor:13.0f} {0:12.0f}")
        for method in args.methods:
            results = {mode: measure(mode, method, folder, base_path, paths) for mode in ("in_memory", "streamed")}
            for mode, (seconds, peak) in results.items():
                print(f"{method:16s} {mode:10s} {seconds:8.2f} {peak:13.0f} {peak - floor:12.0f}")
            (slow, big), (fast, small) = results["in_memory"], results["streamed"]
            print(f"{method:16s} streamed / in memory: {fast / slow:.2f}x time, "
                  f"{(small - floor) / (big - floor):.2f}x memory above the floor")


if __name__ == "__main__":
    main()
