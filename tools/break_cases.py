"""Try to break a checkout's stages with bad data, bad params and damaged files, and classify
what each stage does: a clear error (exit 2, one line), a traceback, a hang, a wrong result
(accepted silently) or lost outputs.

Usage:
    python tools/netns.py -- .venv/bin/python tools/break_cases.py [--repo PATH]

``--repo`` is the checkout whose stages run (default: this one), so the same cases measure an
older revision (``git worktree add /tmp/old <rev>``) against this one. Each case runs the stage
as DVC would, ``python -m stages.<name>`` in a fresh workspace, with the checkout on PYTHONPATH.
The cases are the classes of issue 12; the unit tests in tests/reliability/ check the messages.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

TIMEOUT_S = 180


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # "first" is the first stage DVC runs: validate where the checkout has it, else prepare
    setup: Callable[[Path, dict], None]  # edits the workspace (files and the params dict)
    needs_prepared: bool = False
    args: tuple[str, ...] = ()
    watch: str | None = None  # an existing output that must survive the failure


def user_table(root: Path, params: dict, x: list, labels: list | None = None, ids: list | None = None,
               **options: object) -> None:
    columns = {"x": x, "label": labels or [i % 2 for i in range(len(x))]}
    if ids is not None:
        columns["id"] = ids
        options["id_column"] = "id"
    pq.write_table(pa.table(columns), root / "user.parquet")
    params["data"] = {"name": "parquet", "source": str(root / "user.parquet"), "options": options}


def rows(n: int = 40) -> list[list[float]]:
    return [[float(i), 0.5, -0.5, 1.0] for i in range(n)]


def nan_row(root: Path, params: dict) -> None:
    x = rows()
    x[7][2] = float("nan")
    user_table(root, params, x)


def null_element(root: Path, params: dict) -> None:
    x = rows()
    x[3][1] = None
    user_table(root, params, x)


def repeated_ids(root: Path, params: dict) -> None:
    user_table(root, params, rows(), ids=[0, 0, *range(2, 40)])


def huge_num_classes(root: Path, params: dict) -> None:
    user_table(root, params, rows(), num_classes=10**9)


def empty_shape(root: Path, params: dict) -> None:
    user_table(root, params, rows(), shape=[])


def cifar_bad_label(root: Path, params: dict) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(6)]
        labels[4] = 12 if name == "data_batch_3" else labels[4]
        (folder / name).write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": labels}))
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder)
    params["data"] = {"name": "cifar10", "source": str(root / "cifar-10-python.tar.gz")}


def setting(section: str, key: str, value: object) -> Callable[[Path, dict], None]:
    def apply(root: Path, params: dict) -> None:
        params[section][key] = value

    return apply


def merge_setting(**change: object) -> Callable[[Path, dict], None]:
    def apply(root: Path, params: dict) -> None:
        params["merge"].update(methods=["uniform_soup", "task_arithmetic", "ties"], **change)

    return apply


def corrupt_split(root: Path, params: dict) -> None:
    path = root / "data/prepared/train.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


def damaged_weights(root: Path, params: dict) -> None:
    base = root / "models/base"
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    (base / "card.json").write_text(json.dumps({"model": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "seed": 0}))


def shard_set(manifest: str) -> Callable[[Path, dict], None]:
    def apply(root: Path, params: dict) -> None:
        folder = root / "data/shards/mixup"
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(manifest)
        params["mixing"]["source"] = "shards"

    return apply


def unreachable_store(root: Path, params: dict) -> None:
    params["storage"]["shared_uri"] = "s3://mixpipe-nowhere/store"


def path_is_a_file(root: Path, params: dict) -> None:
    (root / "taken").write_text("a file, not a folder")
    params["paths"]["prepared"] = "taken/prepared"


CASES = [
    Case("NaN in a user's Parquet", "prepare", nan_row),
    Case("null list element", "prepare", null_element),
    Case("repeated sample ids", "prepare", repeated_ids),
    Case("num_classes 1e9", "prepare", huge_num_classes),
    Case("data.options.shape: []", "prepare", empty_shape),
    Case("CIFAR label out of range", "prepare", cifar_bad_label),
    Case("train.epochs: true", "first", setting("train", "epochs", True)),
    Case("train.optim.lr: '0.1' (a string)", "first", lambda r, p: p["train"]["optim"].update(lr="0.1")),
    Case("merge.search ties.density 1.5", "first", merge_setting(search={"ties": {"density": [0.2, 1.5]}})),
    Case("merge.params ties.weights: []", "first", merge_setting(params={"ties": {"weights": []}})),
    Case("merge.params ties.density: true", "first", merge_setting(params={"ties": {"density": True}})),
    Case("augment.num_shards 1e9", "augment", setting("augment", "num_shards", 10**9), needs_prepared=True, args=("mixup",)),
    Case("corrupt Parquet page (ZSTD)", "augment", corrupt_split, needs_prepared=True, args=("mixup",)),
    Case("damaged safetensors header", "evaluate", damaged_weights, needs_prepared=True),
    Case("deleted shard", "train", shard_set(json.dumps({"shards": [{"file": "part-00000.parquet", "sha256": "0" * 64,
                                                                     "rows": 3}]})), needs_prepared=True),
    Case("shard manifest not JSON", "train", shard_set("{truncated"), needs_prepared=True),
    Case("unreachable storage.shared_uri", "train", unreachable_store, needs_prepared=True),
    Case("paths.prepared under a file", "prepare", path_is_a_file),
    Case("paths.prepared under /proc", "prepare", setting("paths", "prepared", "/proc/mixpipe/prepared")),
]


def run(repo: Path, root: Path, stage: str, args: tuple[str, ...] = ()) -> tuple[int | None, str, float]:
    env = {**os.environ, "PYTHONPATH": str(repo), "MIXPIPE_PARAMS": str(root / "params.yaml"),
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "mixpipe", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
           "AWS_MAX_ATTEMPTS": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - started
    return done.returncode, done.stderr, time.perf_counter() - started


def classify(code: int | None, stderr: str) -> str:
    if code is None:
        return "hang"
    if code == 0:
        return "wrong"  # every case is bad input: accepting it is a silent wrong result
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "clear" if code == 2 and len(lines) == 1 else "traceback"


def try_case(repo: Path, case: Case) -> dict:
    with tempfile.TemporaryDirectory(prefix="mixpipe-break-") as directory:
        root = Path(directory)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        if case.needs_prepared and run(repo, root, "prepare")[0] != 0:
            raise SystemExit(f"{case.name}: prepare failed on the default params")
        case.setup(root, params)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage = case.stage
        if stage == "first":
            stage = "validate" if (repo / "stages/validate.py").exists() else "prepare"
        code, stderr, seconds = run(repo, root, stage, case.args)
        lines = stderr.strip().splitlines()
        return {"case": case.name, "stage": stage, "outcome": classify(code, stderr), "exit": code,
                "stderr_lines": len(lines), "seconds": round(seconds, 1), "last_line": (lines[-1] if lines else "")[:160]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    args = parser.parse_args()
    results = [try_case(args.repo.resolve(), case) for case in CASES]
    if args.json:
        for result in results:
            print(json.dumps(result))
        return
    width = max(len(r["case"]) for r in results)
    print(f"{'case':<{width}}  {'stage':<9} {'outcome':<10} exit  lines  seconds")
    for r in results:
        print(f"{r['case']:<{width}}  {r['stage']:<9} {r['outcome']:<10} {str(r['exit']):>4}  {r['stderr_lines']:>5}  {r['seconds']:>7}")
    counts = {kind: sum(r["outcome"] == kind for r in results) for kind in ("clear", "traceback", "hang", "wrong")}
    print(f"\n{len(results)} cases: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


if __name__ == "__main__":
    main()
