"""The driver side of a job-mode stage: what runs on the cluster as the Ray job.

    python -m pipelines.cluster.remote_stage SPEC_JSON

``SPEC_JSON`` (:class:`RemoteStage`) names the shared store, the manifest of the stage's staged
inputs, the outputs to bring back, and the stage's command. In a folder of the job's own, beside
the code the client uploaded, this writes the params and the inputs from the store, runs the
stage's command there as a Ray driver of this cluster, and publishes the outputs: blobs first, then their manifest at
``<store>/jobs/<job id>/outputs.json``, whose presence tells the client everything arrived. Nothing
here reads or writes the client's filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines import storage
from pipelines.cluster import staging
CONFIG_FILES = ("params.yaml", "dvc.yaml")


@dataclass(frozen=True)
class RemoteStage:
    stage: str
    job_id: str
    store: str
    inputs: str  # URL of the inputs' manifest
    outputs: tuple[str, ...]
    command: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RemoteStage:
        raw = json.loads(text)
        return cls(raw["stage"], raw["job_id"], raw["store"], raw["inputs"], tuple(raw["outputs"]), tuple(raw["command"]))


def job_folder(store: str, job_id: str) -> str:
    return storage.join(store, "jobs", job_id)


def outputs_url(store: str, job_id: str) -> str:
    return storage.join(job_folder(store, job_id), "outputs.json")


def run(spec: RemoteStage, code: Path, root: Path) -> int:
    """Inputs in, the stage, outputs out; the stage's exit code.

    Args:
        code: the job's working directory (the uploaded code and params).
        root: an empty folder of this job's own, where the stage runs: Ray unpacks the same code
            package into one shared folder for every job that uploads it, so nothing is written there.
    """
    manifest = staging.read_manifest(spec.inputs)
    if manifest is None:
        print(f"{spec.stage}: the staged inputs {spec.inputs} are gone from the store", file=sys.stderr)
        return 2
    chosen = os.environ.get("MIXPIPE_PARAMS")  # another params file, relative to the code (forwarded by the client)
    for name in (*CONFIG_FILES, *([chosen] if chosen and not os.path.isabs(chosen) else [])):
        if (code / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(code / name, root / name)
    fetched = staging.materialize(manifest, spec.store, root)
    print(f"{spec.stage}: {fetched.files} input file(s), {fetched.bytes} bytes from the store", flush=True)
    command = list(spec.command)
    if command[:1] == ["python"]:  # the interpreter this job runs in, whatever PATH says
        command[0] = sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    code_returned = subprocess.call(command, cwd=root, env=env)
    if code_returned != 0:
        return code_returned
    missing = [path for path in spec.outputs if not (root / path).exists()]
    if missing:
        print(f"{spec.stage}: the stage did not write {', '.join(missing)}", file=sys.stderr)
        return 2
    _, sent = staging.publish(root, spec.outputs, spec.store, outputs_url(spec.store, spec.job_id))
    print(f"{spec.stage}: outputs in the store ({sent.files} new file(s), {sent.bytes} bytes; "
          f"{sent.skipped} already there)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pipelines.cluster.remote_stage SPEC_JSON", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mixpipe-job-") as root:
        return run(RemoteStage.from_json(argv[0]), Path.cwd(), Path(root))


if __name__ == "__main__":
    sys.exit(main())
