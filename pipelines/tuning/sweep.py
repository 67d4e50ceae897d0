"""Ray Tune over the training driver: a method x alpha grid of fine-tunes, pruned by synchronous
successive halving (Jamieson & Talwalkar 2016, "Non-stochastic Best Arm Identification and
Hyperparameter Optimization"; the synchronous form of Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning", ASHA).

Rungs are at ``grace_period * reduction_factor**k`` epochs below ``epochs``, then ``epochs``. In
each rung every surviving trial trains up to the rung's epoch as one Tune trial that calls
:func:`pipelines.training.run_training` (the train stage's driver), resuming its own Ray Train run.
Only when the whole rung has reported do the best ``max(1, n // reduction_factor)`` go on, ranked
by score, then loss, then name. ASHA decides as reports arrive, so which trials it stopped
depended on timing; here the same seed gives the same trials table, checkpoints and soups.

Nothing of Tune's is ever restored. Tune keeps its experiment state as pickles (``tuner.pkl``,
``experiment_state-*.json`` holding cloudpickled trials) in the run-state storage, which may be
shared, so restoring would run whatever code anyone able to write there planted. Instead every
trial writes its result to the sweep's ledger (JSON, one file per trial and rung) when it
finishes a rung, and a re-run trains only what the ledger lacks, each trial's Train run
resuming from its last checkpoint (safetensors + JSON); each rung starts a fresh Tuner.

Layout under ``<storage>/<experiment>/``: ``<trial>/`` the trial's Train run, ``ledger/<trial>-eNNN.json``,
``tune/rung-K/`` Tune's bookkeeping for rung K (rebuilt on every run).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipelines import storage
from pipelines.cluster.resources import alive_node_resources, autoscaler_ceiling, ensure_feasible, placeable
from pipelines.data import ArrayDataset, StoredSplit
from pipelines.errors import MixpipeError
from pipelines.mixing.spec import freeze
from pipelines.seeding import derive_seed
from pipelines.tasks import get_task
from pipelines.training import TrainJob, run_training
from pipelines.training.driver import check_read_cpus, cluster_worker_setup, cpus_left_for_reads, worker_demand
from pipelines.training.state import load_train_state

TRIAL_DRIVER_MEMORY = 256 * 1024**2
LEDGER = "ledger"


@dataclass(frozen=True)
class TrialPoint:
    """One grid point; ``name`` is stable across runs (it names the trial's outputs)."""

    name: str
    method: str
    alpha: float
    options: tuple[tuple[str, Any], ...] = ()
    seed_index: int = 0

    def __post_init__(self) -> None:
        # Tune hands the point back through JSON, as lists
        object.__setattr__(self, "options", freeze(self.options))


def grid(
    methods: list[str], alphas: list[float], options: Mapping[str, tuple[tuple[str, Any], ...]] | None = None,
    seeds: int = 1,
) -> list[TrialPoint]:
    """Every (method, alpha) pair, in params order, ``seeds`` times each, with names like
    ``t00-mixup-a0.2`` (the first seed) and ``t00-mixup-a0.2-s1`` (the others), so a sweep's
    names do not change when seeds are added. A trial's seed is derived from its name.

    Args:
        options: method -> its own parameters (:attr:`MixingSpec.options`), given to its trials.
        seeds: repeats of each grid point.
    """
    options = options or {}
    pairs = [(m, a) for m in methods for a in alphas]
    return [
        TrialPoint(f"t{i:02d}-{m}-a{a:g}" + (f"-s{s}" if s else ""), m, float(a), options.get(m, ()), s)
        for i, (m, a) in enumerate(pairs)
        for s in range(seeds)
    ]


def rung_epochs(epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The epochs at which trials are compared: ``grace * eta**k`` below ``epochs``, then ``epochs``."""
    if not 1 <= grace_period <= epochs or reduction_factor < 2:
        raise ValueError(f"need 1 <= grace_period <= epochs and reduction_factor >= 2, got "
                         f"{grace_period}, {epochs}, {reduction_factor}")
    rungs, epoch = [], grace_period
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return [*rungs, epochs]


@dataclass(frozen=True)
class RungResult:
    """What a trial reported at the end of a rung (one ledger file)."""

    trial: str
    epochs: int
    val_score: float
    val_loss: float
    checkpoint_path: str

    def rank_key(self) -> tuple[float, float, str]:
        """Best first: highest score, then lowest loss, then name; NaN ranks last."""
        score = -self.val_score if math.isfinite(self.val_score) else math.inf
        loss = self.val_loss if math.isfinite(self.val_loss) else math.inf
        return score, loss, self.trial


def survivors(results: list[RungResult], reduction_factor: int) -> list[str]:
    """The trials that go on to the next rung: the best ``max(1, n // reduction_factor)``."""
    keep = max(1, len(results) // reduction_factor)
    return [r.trial for r in sorted(results, key=RungResult.rank_key)[:keep]]


@dataclass(frozen=True)
class TrialOutcome:
    """A finished trial; ``val_score`` is its last epoch's task score (accuracy, or R² for regression)."""

    point: TrialPoint
    epochs_run: int
    val_score: float
    val_loss: float
    checkpoint_path: str
    weights: dict[str, Any]


def trial_job(template: TrainJob, point: TrialPoint, sweep_path: str, stop_after_epoch: int | None = None) -> TrainJob:
    """The template with this trial's mixing, its own seed, and its own Train run ``<sweep_path>/<trial>``,
    trained up to ``stop_after_epoch`` in this call."""
    return replace(
        template,
        run_name=point.name,
        storage_path=sweep_path,
        seed=derive_seed(template.seed, "trial", point.name),
        mixing=replace(template.mixing, method=point.method, alpha=point.alpha, options=point.options),
        stop_after_epoch=stop_after_epoch,
        params_key="tune",
    )


def ledger_file(sweep_path: str, trial: str, epochs: int) -> str:
    return storage.join(sweep_path, LEDGER, f"{trial}-e{epochs:03d}.json")


def read_rung_result(url: str) -> RungResult | None:
    """A ledger entry, or None if there is none (a trial not yet run to that rung)."""
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return None
    raw = storage.read_json(url)
    try:
        return RungResult(str(raw["trial"]), int(raw["epochs"]), float(raw["val_score"]), float(raw["val_loss"]),
                          str(raw["checkpoint_path"]))
    except (KeyError, TypeError, ValueError) as error:
        raise MixpipeError(f"tune: {url} is not a sweep ledger entry ({error!r}); delete it to re-run that trial") from None


def _run_trial(
    config: dict[str, Any], template: TrainJob, sweep_path: str, train: ArrayDataset | StoredSplit, val: ArrayDataset | StoredSplit,
) -> None:
    from ray import tune

    point, epochs = TrialPoint(**config["point"]), int(config["epochs"])
    outcome = run_training(trial_job(template, point, sweep_path, epochs), train, val)
    last = outcome.history[-1]
    result = RungResult(point.name, int(last["epoch"]), float(last[get_task(template.card.task).score_column]),
                        float(last["val_loss"]), outcome.checkpoint_path)
    if result.epochs != epochs:
        raise MixpipeError(f"tune: trial {point.name} stopped at epoch {result.epochs}, not at its rung's {epochs}")
    storage.write_json(ledger_file(sweep_path, point.name, epochs), asdict(result))
    tune.report({"val_score": result.val_score, "val_loss": result.val_loss, "epochs": result.epochs})


def _concurrency(template: TrainJob, wanted: int, streamed: bool = False) -> int:
    """Trials at once: as many as asked, but no more worker groups than the cluster holds together,
    now or once its autoscaler has added what its node types offer (a trial whose Train run cannot
    start would time out instead of queueing); streamed, fewer if need be to leave
    ``input.read_cpus`` for the reads."""
    _, per_worker, _ = cluster_worker_setup(template)
    demand = worker_demand(template, per_worker)
    ensure_feasible(demand, template.resource_wait_s)
    groups = placeable(per_worker, alive_node_resources()) // template.num_workers
    ceiling = autoscaler_ceiling()
    if ceiling is not None:
        groups = max(groups, min(int(ceiling.get(key, 0.0) // amount) for key, amount in demand.total.items() if amount > 0))
    groups = max(1, min(wanted, groups))
    if streamed:
        while groups > 1 and cpus_left_for_reads(template, per_worker, groups)[0] < template.read_cpus:
            groups -= 1
        check_read_cpus(template, per_worker, groups)
    return groups


def _progress_lines(rung: int, epochs: int, total: int) -> Any:
    """A Tune callback that prints one line per trial change (started, finished with its score,
    failed) with the rung's counts, instead of Tune's status table every 30 s."""
    from ray import tune

    class ProgressLines(tune.Callback):
        def __init__(self) -> None:
            self.running: set[str] = set()
            self.done = 0

        def _line(self, trial: Any, what: str) -> None:
            name = trial.config.get("point", {}).get("name", str(trial))
            print(f"tune: rung {rung + 1} (to epoch {epochs}): {name} {what} - {self.done}/{total} done, "
                  f"{len(self.running)} running", flush=True)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.running.add(trial.trial_id)
            self._line(trial, "started")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.running.discard(trial.trial_id)
            self.done += 1
            result = trial.last_result or {}
            score = result.get("val_score")
            self._line(trial, f"finished, val score {score:.4f}" if isinstance(score, float) else "finished")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.running.discard(trial.trial_id)
            self._line(trial, "FAILED")

    return ProgressLines()


def _run_rung(
    template: TrainJob, sweep_path: str, points: list[TrialPoint], epochs: int, rung: int,
    train: ArrayDataset | StoredSplit, val: ArrayDataset | StoredSplit, max_concurrent_trials: int,
) -> None:
    from ray import tune

    tune_path = storage.join(sweep_path, "tune")
    fs, stale = storage.filesystem(storage.join(tune_path, f"rung-{rung}"))
    if fs.exists(stale):
        fs.rm(stale, recursive=True)  # a killed run's bookkeeping: never read, so never restored
    tune_filesystem, tune_storage = storage.arrow_filesystem(tune_path)
    trainable = tune.with_parameters(_run_trial, template=template, sweep_path=sweep_path, train=train, val=val)
    # A trial only drives its Train run: the Train workers hold the CPUs. The trial reserves a
    # little memory instead, because Tune refuses a request with no resources at all.
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY})
    tuner = tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search([asdict(p) for p in points]), "epochs": epochs},
        tune_config=tune.TuneConfig(max_concurrent_trials=_concurrency(template, max_concurrent_trials, isinstance(train, StoredSplit))),
        run_config=tune.RunConfig(name=f"rung-{rung}", storage_path=tune_storage, storage_filesystem=tune_filesystem,
                                  verbose=0, callbacks=[_progress_lines(rung, epochs, len(points))]),
    )
    for result in tuner.fit():
        if result.error is not None:
            raise MixpipeError(f"tune: trial {result.config['point']['name']} failed: {result.error}")


def run_sweep(
    template: TrainJob,
    points: list[TrialPoint],
    train: ArrayDataset | StoredSplit,
    val: ArrayDataset | StoredSplit,
    *,
    experiment_name: str,
    grace_period: int,
    reduction_factor: int,
    max_concurrent_trials: int,
) -> list[TrialOutcome]:
    """Fine-tune every grid point under synchronous successive halving; return each trial's last
    checkpoint (trials stopped at a rung keep the checkpoint of that rung).

    An interrupted sweep with the same ``experiment_name`` and storage keeps its finished trials
    (the ledger) and resumes the unfinished ones from their checkpoints.

    Raises:
        MixpipeError: a trial failed, or the ledger lacks a trial the rung ran.
    """
    import ray.train

    plan, _, _ = cluster_worker_setup(template)  # decided and said once, for every trial
    template = replace(template, use_gpu=plan.use_gpu, report_devices=False)
    sweep_path = storage.join(template.storage_path, experiment_name)
    final: dict[str, RungResult] = {}
    active = list(points)
    for rung, epochs in enumerate(rung_epochs(template.epochs, grace_period, reduction_factor)):
        todo = [p for p in active if read_rung_result(ledger_file(sweep_path, p.name, epochs)) is None]
        if todo:
            _run_rung(template, sweep_path, todo, epochs, rung, train, val, max_concurrent_trials)
        results = []
        for point in active:
            result = read_rung_result(ledger_file(sweep_path, point.name, epochs))
            if result is None:
                raise MixpipeError(f"tune: trial {point.name} finished rung {rung} without a ledger entry")
            results.append(result)
            final[point.name] = result
        kept = set(survivors(results, reduction_factor))
        last = epochs == template.epochs
        pruned = sorted(r.trial for r in results if r.trial not in kept)
        print(f"tune: rung {rung + 1} (epoch {epochs}): {len(results)} trial(s), {len(results) - len(todo)} from the "
              f"ledger" + ("" if last else f"; going on: {', '.join(sorted(kept))}; pruned: {', '.join(pruned) or '-'}"),
              flush=True)
        active = [p for p in active if p.name in kept]

    filesystem, _ = storage.arrow_filesystem(template.storage_path)
    score_column = get_task(template.card.task).score_column
    outcomes = []
    for point in points:
        result = final[point.name]
        with tempfile.TemporaryDirectory(prefix="mixpipe-trial-") as directory:
            ray.train.Checkpoint(result.checkpoint_path, filesystem=filesystem).to_directory(directory)
            saved = load_train_state(directory)
        last = saved.progress.history[-1]
        if int(last["epoch"]) != result.epochs or float(last[score_column]) != result.val_score:
            raise MixpipeError(f"tune: the checkpoint of trial {point.name} at {result.checkpoint_path} does not match "
                               f"its ledger entry (epoch {last['epoch']} vs {result.epochs})")
        outcomes.append(TrialOutcome(point, result.epochs, result.val_score, result.val_loss,
                                     result.checkpoint_path, saved.weights))
    return outcomes


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean (None for no values) and sample standard deviation (``n - 1``; None below two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) >= 2 else None
    return mean, std


def with_point_spread(rows: list[dict[str, Any]], score: str, epochs: int) -> list[dict[str, Any]]:
    """Each trial row with its grid point's ``point_<score>_mean`` and ``_std`` across seeds.

    Only the point's seeds that ran all ``epochs`` count (a seed stopped at an earlier rung was
    scored after fewer epochs); the mean is None when none did, the std when fewer than two did.
    """
    finished: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if row["epochs_run"] == epochs:
            finished.setdefault((row["method"], row["alpha"]), []).append(float(row[score]))
    out = []
    for row in rows:
        mean, std = _mean_std(finished.get((row["method"], row["alpha"]), []))
        out.append({**row, f"point_{score}_mean": mean, f"point_{score}_std": std})
    return out


def grid_scores(rows: list[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """The tune grid for a method x alpha heatmap. Per grid point, over its seeds that trained
    longest (so one cell never mixes scores after different epochs): the mean and std of their
    last validation ``score``, how many, their epochs, a label (``0.953``, ``0.953±0.004``, with
    ``(e2)`` when they were pruned at that epoch) and ``dark`` (the cell is in the lower half of
    the colour scale: white text reads better there)."""
    points: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        points.setdefault((row["method"], row["alpha"]), []).append(row)
    cells = []
    for (method, alpha), members in points.items():
        epochs = max(int(m["epochs_run"]) for m in members)
        longest = [m for m in members if int(m["epochs_run"]) == epochs]
        mean, std = _mean_std([float(m[score]) for m in longest])
        pruned = all(m["stopped_early"] for m in longest)
        label = f"{mean:.3f}" + (f"±{std:.3f}" if std is not None else "") + (f" (e{epochs})" if pruned else "")
        cells.append({"method": method, "alpha": alpha, "score": mean, "score_std": std, "seeds": len(longest),
                      "epochs_run": epochs, "label": label})
    low, high = min(c["score"] for c in cells), max(c["score"] for c in cells)
    return [{**c, "dark": c["score"] < (low + high) / 2} for c in cells]
