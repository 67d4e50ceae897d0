"""What one training run is: a frozen description handed from the driver to every worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipelines.config import OptimParams
from pipelines.mixing import MixingSpec
from pipelines.models import ModelCard


# Ray Train's own default worker-group start timeout: on a local instance only the stage's own
# runs compete, and they are sized to fit together.
LOCAL_QUEUE_WAIT_S = 60.0


@dataclass(frozen=True)
class TrainJob:
    """One Ray Train run.

    Attributes:
        run_name: Ray Train run name. A run with the same name and storage path *resumes*, so
            name runs from their inputs (params and data hashes), never by hand.
        card: the model to build (and, with ``init_weights`` unset, the seed of its initial weights).
        batch_size: per worker; the global batch is ``batch_size * num_workers``.
        seed: root seed of data order and mixing draws (per rank, epoch and step).
        init_weights: safetensors bytes of starting weights (fine-tuning), else fresh init.
        crash_after_epoch: a fault drill: on the run's first attempt, the rank-0 worker kills its
            own process (SIGKILL) right after reporting this epoch; Ray Train then restarts the
            group from the last registered checkpoint if ``max_failures`` allows. None normally.
        stop_after_epoch: train only up to this epoch in this call (a successive-halving rung);
            the schedule still spans ``epochs``, and running the job again with a later stop
            resumes from the checkpoint. None: all ``epochs``.
        params_key: the params section the run comes from (``train``, ``tune``), for messages.
        precision: the dtype of the model and data on the workers; ``float64`` makes equivalence
            proofs (DDP sharding, resume) exact up to float64 rounding.
        resource_wait_s: how long to wait for a cluster to grow to fit the worker group (0: fail
            at once when it does not fit).
        queue_wait_s: how long a worker group that fits waits for resources others hold (Ray
            Train's worker-group start timeout, on top of ``resource_wait_s``).
        report_devices: print the one line saying CPU or GPU and why (a sweep says it once for
            all its trials, and hands them the decided ``use_gpu``).
        val_batch_size: rows per forward of the per-epoch validation (``evaluate.batch_size``).
        deterministic: deterministic kernels only (:mod:`pipelines.training.determinism`).
        part_rows: rows of each part of the prepared train split, whose order the epochs follow
            on both input paths (None: the split is one part).
        window_rows: rows per shuffle window of an epoch (None: one window, a full shuffle).
        read_cpus: CPUs each Ray Data read task reserves when the splits are streamed.
    """

    run_name: str
    card: ModelCard
    epochs: int
    batch_size: int
    optim: OptimParams
    mixing: MixingSpec
    seed: int
    storage_path: str
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool | Literal["auto"] = "auto"
    max_failures: int = 0
    init_weights: bytes | None = None
    checkpoints_to_keep: int = 2
    crash_after_epoch: int | None = None
    stop_after_epoch: int | None = None
    params_key: str = "train"
    resource_wait_s: float = 0.0
    queue_wait_s: float = LOCAL_QUEUE_WAIT_S
    precision: Literal["float32", "float64"] = "float32"
    report_devices: bool = True
    val_batch_size: int = 512
    deterministic: bool = False
    part_rows: tuple[int, ...] | None = None
    window_rows: int | None = None
    read_cpus: float = 0.5

    @property
    def last_epoch(self) -> int:
        """The epoch this call trains up to."""
        return self.epochs if self.stop_after_epoch is None else min(self.epochs, self.stop_after_epoch)
