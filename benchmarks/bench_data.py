"""Data at scale: generated image sets through prepare, augment and one epoch of train (2 workers).

Usage (inside the loopback namespace, as every run that starts Ray):
    python tools/netns.py -- python benchmarks/bench_data.py [--sets cifar10-60k,parquet-100k,parquet-400k]
        [--work /tmp/mixpipe-bench-data] [--keep]

Sets: ``cifar10-60k`` is CIFAR-10's python archive layout (50k + 10k images, 3x32x32) with
generated pixels; ``parquet-100k``/``parquet-400k`` are 64x64 RGB images in a user Parquet table
(``data.name: parquet``, a list<uint8> column). Images are class-coloured noise, so a model learns
something and zstd cannot shrink them much. Each set runs the real stages (``python -m stages.X``,
each starting its own local Ray) in a workspace of its own, and the table gives per stage:

- wall seconds, and the stage process's peak RSS (``VmHWM``) and peak private memory (``RssAnon``,
  sampled every 0.2 s);
- for train: samples/s of the epoch (the loop's own count, data reading included) and the same two
  peaks of each Ray Train worker (found among the stage's descendants). RSS counts the pages of
  Ray's shared object store a worker touched; private memory is what the worker itself holds;
- disk size of the prepared splits and of the shards.

Train runs once per input path asked for: CIFAR-10 both in memory and streamed (the ratio of
their samples/s is the cost of streaming); the large sets streamed (the path ``input.mode: auto``
takes above ``input.stream_above_mib``), so that worker RSS at 100k and 400k can be compared.
The ratios printed below the table are the ones the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.lifetime import descendants  # noqa: E402

SETS = {
    # name: (rows, shape, writer, train model, input modes)
    "cifar10-60k": (60_000, (3, 32, 32), "cifar", "cnn", ("memory", "stream")),
    "parquet-100k": (100_000, (3, 64, 64), "parquet", "mlp", ("stream",)),
    "parquet-400k": (400_000, (3, 64, 64), "parquet", "mlp", ("stream",)),
}
CHUNK = 10_000


def images(rows: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise around a colour per class (10 classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, rows)
    colours = np.random.default_rng(0).integers(40, 216, (10, shape[0]))
    base = colours[labels][:, :, None, None]
    pixels = np.clip(base + rng.integers(-40, 41, (rows, *shape)), 0, 255).astype(np.uint8)
    return pixels, labels


def write_cifar(root: Path, rows: int, shape: tuple[int, ...]) -> str:
    """The python-archive folder: five training batches and a test batch of pickled dicts."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    per_batch = rows // 6
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        pixels, labels = images(per_batch, shape, seed=index)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": pixels.reshape(per_batch, -1),
                 b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return str(root)


def write_parquet(root: Path, rows: int, shape: tuple[int, ...]) -> str:
    """A user table (list<uint8> pixels, int64 labels), written a chunk at a time."""
    path = root / "images.parquet"
    root.mkdir(parents=True)
    schema = pa.schema([("pixels", pa.list_(pa.uint8())), ("label", pa.int64())])
    width = int(np.prod(shape))
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, CHUNK):
            pixels, labels = images(min(CHUNK, rows - start), shape, seed=start)
            flat = pixels.reshape(-1)
            offsets = pa.array(np.arange(0, (len(labels) + 1) * width, width, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, pa.array(flat))
            writer.write_table(pa.table({"pixels": column, "label": pa.array(labels)}, schema=schema))
    return str(path)


def memory_kib(pid: int) -> tuple[int, int]:
    """``(VmHWM, RssAnon)`` of ``pid`` in KiB: its peak RSS so far (shared object-store pages it
    touched included), and its private memory now; zeros when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return tuple(int(fields.get(key, "0 kB").split()[0]) for key in ("VmHWM", "RssAnon"))


def watch_peaks(pid: int, done: threading.Event, peaks: dict[int, list[int]]) -> None:
    """Peak RSS and peak private memory (KiB) of the stage process ``pid`` and of every Ray Train
    worker under it, sampled every 0.2 s until ``done``."""
    while not done.is_set():
        for process in [pid, *descendants(pid)]:
            try:
                if process != pid and b"RayTrainWorker" not in Path(f"/proc/{process}/cmdline").read_bytes():
                    continue
            except OSError:
                continue
            now = memory_kib(process)
            seen = peaks.setdefault(process, [0, 0])
            peaks[process] = [max(a, b) for a, b in zip(seen, now, strict=True)]
        time.sleep(0.2)


def run_stage(workspace: Path, *argv: str) -> dict:
    """Run ``python -m stages.<argv>`` in ``workspace``; wall seconds, the stage process's peak RSS
    (MiB; its Ray daemons and workers not included) and each Train worker's."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MIXPIPE_PARAMS": str(workspace / "params.yaml")}
    started = time.perf_counter()
    log = open(workspace / f"{argv[0]}.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", *(f"stages.{argv[0]}",), *argv[1:]], cwd=workspace, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    peaks: dict[int, list[int]] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_peaks, args=(process.pid, done, peaks))
    watcher.start()
    status = process.wait()
    done.set()
    watcher.join()
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed; see {workspace / (argv[0] + '.log')}")
    stage = peaks.pop(process.pid, [0, 0])
    return {"seconds": time.perf_counter() - started, "rss_mib": stage[0] / 1024, "private_mib": stage[1] / 1024,
            "workers_mib": sorted(v[0] / 1024 for v in peaks.values()),
            "workers_private_mib": sorted(v[1] / 1024 for v in peaks.values())}


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


def bench_set(name: str, work: Path) -> list[dict]:
    rows, shape, writer, model, modes = SETS[name]
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    source = (write_cifar if writer == "cifar" else write_parquet)(root / "source", rows, shape)
    generated = time.perf_counter() - started
    workspace = root / "workspace"
    workspace.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"name": "cifar10" if writer == "cifar" else "parquet", "source": source,
                      "options": {} if writer == "cifar" else {"x_column": "pixels", "shape": list(shape)},
                      "val_fraction": 0.05, "test_fraction": 0.05, "part_mib": 64}
    params["augment"] = {"methods": ["cutmix"], "num_shards": max(2, rows // 5000)}
    params["train"].update(model=model, epochs=1, batch_size=128, num_workers=2, cpus_per_worker=0.5)
    out = []
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare = run_stage(workspace, "prepare")
    out.append({"set": name, "stage": f"prepare (generate {generated:.0f}s)", **prepare,
                "disk_mib": folder_mib(workspace / "data/prepared")})
    augment = run_stage(workspace, "augment", "cutmix")
    out.append({"set": name, "stage": "augment cutmix", **augment, "disk_mib": folder_mib(workspace / "data/shards")})
    for mode in modes:
        params["input"] = {**params.get("input", {}), "mode": mode}
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        train = run_stage(workspace, "train")
        history = pq.read_table(workspace / "results/train_history.parquet").to_pylist()
        out.append({"set": name, "stage": f"train 1 epoch, {mode}", **train, "samples_per_s": history[-1]["samples_per_s"]})
    shutil.rmtree(root / "source")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--work", default="/tmp/mixpipe-bench-data")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (prepared data, shards, logs)")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    for name in args.sets.split(","):
        print(f"bench_data: {name} ...", flush=True)
        done = bench_set(name, work)
        rows.extend(done)
        for row in done:  # as they come: a later set failing keeps these
            print(f"bench_data: {json.dumps(row)}", flush=True)
        if not args.keep:
            shutil.rmtree(work / name / "workspace" / "data", ignore_errors=True)
    print("| set | stage | wall s | stage peak RSS / private MiB | Train workers' peak RSS / private MiB | samples/s | disk MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        workers = ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(r["workers_mib"], r["workers_private_mib"], strict=True))
        rate = f"{r['samples_per_s']:.0f}" if "samples_per_s" in r else "-"
        disk = f"{r['disk_mib']:.0f}" if "disk_mib" in r else "-"
        print(f"| {r['set']} | {r['stage']} | {r['seconds']:.0f} | {r['rss_mib']:.0f} / {r['private_mib']:.0f} | "
              f"{workers or '-'} | {rate} | {disk} |")
    by = {(r["set"], r["stage"]): r for r in rows}
    memory, stream = by.get(("cifar10-60k", "train 1 epoch, memory")), by.get(("cifar10-60k", "train 1 epoch, stream"))
    if memory and stream:
        print(f"CIFAR-10 samples/s, streamed / in memory: {stream['samples_per_s'] / memory['samples_per_s']:.3f}")
    small, large = by.get(("parquet-100k", "train 1 epoch, stream")), by.get(("parquet-400k", "train 1 epoch, stream"))
    if small and large and small["workers_mib"] and large["workers_mib"]:
        print(f"streamed worker peak RSS, 400k / 100k: {max(large['workers_mib']) / max(small['workers_mib']):.3f}; "
              f"peak private memory: {max(large['workers_private_mib']) / max(small['workers_private_mib']):.3f}")


if __name__ == "__main__":
    main()
