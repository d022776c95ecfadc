"""``train``: the paper's recipes as one resumable loop, on CPU or GPU, one or many processes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from resnet_mlops.data.loaders import LoaderParams, build_loader, evaluation_split
from resnet_mlops.data.loaders.build import Loader
from resnet_mlops.engine.artifact import model_kwargs, save_model, state_dict_of
from resnet_mlops.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from resnet_mlops.engine.metrics import evaluate_model
from resnet_mlops.engine.runtime import (
    Runtime,
    autocast,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
    teardown_runtime,
)
from resnet_mlops.io import write_json_atomic
from resnet_mlops.models import build_model
from resnet_mlops.params.base import to_dict
from resnet_mlops.params.train import TrainParams
from resnet_mlops.train.progress import ProgressReporter
from resnet_mlops.train.schedule import learning_rate, to_iterations, warmup_iterations
from resnet_mlops.train.stop import StopRequest


class MetricSink(Protocol):
    """Where per-epoch metrics go besides the history file (the MLflow tracker)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass(frozen=True)
class TrainPaths:
    """Where ``train`` writes: the resumable checkpoint, the final model, metrics and curves."""

    checkpoint: Path
    model: Path
    metrics: Path
    history: Path


@dataclass
class TrainState:
    """What a checkpoint holds beyond the weights and optimizer: the position in the run."""

    iteration: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    epoch_sums: dict[str, float] = field(
        default_factory=lambda: {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
    )
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None


class Interrupted(Exception):
    """A stop was requested (SIGTERM, the launcher gone); a checkpoint was saved first."""


@dataclass
class TrainResult:
    """The outcome of a finished run."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    model: Any
    iterations: int
    run_id: str | None = None  # the MLflow run the checkpoint belongs to
    rebuilt: bool = False  # True: the checkpoint had finished; outputs rewritten, no training


def _num_classes(dataset: str, data_dir: Path) -> int:
    if dataset == "cifar10":
        return 10
    return len(json.loads((data_dir / "index.json").read_text())["classes"])


def _eval_split(dataset: str, data_dir: Path) -> str:
    if dataset == "cifar10":
        return evaluation_split(data_dir)
    return "val"


def train(
    dataset: str,
    params: TrainParams,
    loader_params: LoaderParams,
    data_dir: Path,
    paths: TrainPaths,
    *,
    resume: bool = False,
    sink: MetricSink | None = None,
    on_start: Callable[[TrainState], str | None] | None = None,
    provenance: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    resume_key: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train ``params.model`` on a preprocessed data set; resumable, distributed under torchrun.

    Args:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        params: the ``train`` section.
        loader_params: the ``loader`` section.
        data_dir: the preprocessed data (``data/preprocessed/<dataset>``).
        paths: where to write (rank 0 only).
        resume: continue from ``paths.checkpoint``; an error if it does not exist. A
            checkpoint that has already finished is not trained further: the outputs are
            rewritten from it (``TrainResult.rebuilt``) and ``on_start`` is not called.
        sink: receives each epoch's metrics (rank 0 only).
        on_start: called once on rank 0 with the state (holding the run id of a resumed run);
            returns the run id to store in checkpoints.
        provenance: data version, git commit etc., stored in the model file.
        config: the whole parsed params, stored in checkpoints and the model file.
        resume_key: what this run was started with (see ``train.resume``), stored in its
            checkpoints so that ``--auto-resume`` continues only them. A resumed checkpoint
            written under another key (or none) keeps no key: it matches nothing.
        stop: polled between batches; default: one set by SIGTERM during the call.

    Raises:
        CheckpointError: ``resume`` and the checkpoint is missing, corrupt, of another model
            or past the end of this schedule.
        Interrupted: a stop was requested; a checkpoint was saved first.
    """
    stop = stop or StopRequest()
    runtime = setup_runtime(params.device)
    try:
        with stop.on_sigterm():
            return _train(
                dataset,
                params,
                loader_params,
                data_dir,
                paths,
                runtime,
                resume,
                sink,
                on_start,
                provenance or {},
                config or {},
                resume_key,
                stop,
            )
    finally:
        teardown_runtime(runtime)


def _train(
    dataset: str,
    params: TrainParams,
    loader_params: LoaderParams,
    data_dir: Path,
    paths: TrainPaths,
    runtime: Runtime,
    resume: bool,
    sink: MetricSink | None,
    on_start: Callable[[TrainState], str | None] | None,
    provenance: dict[str, Any],
    config: dict[str, Any],
    key: dict[str, Any] | None,
    stop: StopRequest,
) -> TrainResult:
    checkpoint = _shared_checkpoint(paths.checkpoint, params.model, resume, runtime)
    seed_everything(params.seed, params.deterministic)
    if params.batch_size % runtime.world_size:
        raise ValueError(
            f"train.batch_size {params.batch_size} is not divisible by {runtime.world_size} ranks"
        )
    memory_format = "channels_last" if params.channels_last else "contiguous"
    torch_format = torch.channels_last if params.channels_last else torch.contiguous_format
    loader_args = dict(
        params=loader_params,
        memory_format=memory_format,
        shard_id=runtime.rank,
        num_shards=runtime.world_size,
        seed=params.seed,
        device=runtime.device,
    )
    per_rank_batch = params.batch_size // runtime.world_size
    train_loader = build_loader(
        dataset, "train", data_dir, per_rank_batch, train=True, **loader_args
    )
    eval_split = _eval_split(dataset, data_dir)
    eval_loader = build_loader(
        dataset, eval_split, data_dir, per_rank_batch, train=False, **loader_args
    )
    num_classes = _num_classes(dataset, data_dir)
    iterations_per_epoch = len(train_loader)
    total = to_iterations(params.schedule.length, params.schedule, iterations_per_epoch)
    warmup = warmup_iterations(params.schedule, params.model, iterations_per_epoch)

    kwargs = model_kwargs(params.model, params.shortcut, params.zero_init_residual, num_classes)
    model = build_model(params.model, **kwargs).to(runtime.device, memory_format=torch_format)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=params.optimizer.lr,
        momentum=params.optimizer.momentum,
        weight_decay=params.optimizer.weight_decay,
        nesterov=params.optimizer.nesterov,
    )
    dtype = resolve_precision(params.precision, runtime.device)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=dtype == torch.float16)
    state = TrainState()
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model_state"])
            optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"{paths.checkpoint}: does not fit this model ({error})"
            ) from None
        scaler.load_state_dict(checkpoint["scaler_state"])
        set_rng_state(checkpoint["rng"])
        state = TrainState(**checkpoint["train_state"])
        if state.iteration > total:
            raise CheckpointError(
                f"{paths.checkpoint}: at iteration {state.iteration}, past the end of this "
                f"schedule ({total} iterations)"
            )
        if checkpoint.get("resume_key") != key:
            key = None  # a hybrid of two configurations: never auto-resumed
    if checkpoint is not None and _finished(state, total):
        # Finished already (a run killed after its last checkpoint): write the outputs from
        # it rather than train 0 iterations; the MLflow run is the caller's to settle.
        if runtime.is_main:
            write_json_atomic(paths.history, state.history)
        final = _write_outputs(
            dataset,
            data_dir,
            loader_params,
            params,
            model,
            kwargs,
            state,
            paths,
            runtime,
            provenance,
            config,
        )
        return TrainResult(final, state.history, model, state.iteration, state.run_id, True)
    if runtime.is_main and on_start is not None:
        state.run_id = on_start(state)

    def save(target: TrainState) -> None:
        if runtime.is_main:
            save_checkpoint(
                paths.checkpoint,
                {
                    "model": params.model,
                    "model_state": state_dict_of(model),
                    "optimizer_state": optimizer.state_dict(),
                    "scaler_state": scaler.state_dict(),
                    "rng": rng_state(),
                    "train_state": to_dict(target),
                    "config": config,
                    "resume_key": key,
                },
            )

    if checkpoint is None:
        # At once, before any batch: the checkpoint now names this run's MLflow run, so a run
        # killed from here on is resumed (and its MLflow run ended) by the next --auto-resume,
        # and an older checkpoint that this run does not continue is gone.
        save(state)
    restore_forward = _cuda_graphs(model, dataset, per_rank_batch, params, runtime, dtype)
    net: torch.nn.Module = model
    if params.compile:
        net = torch.compile(net)
    if runtime.distributed:
        net = DistributedDataParallel(
            net, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )

    progress = ProgressReporter(
        total=total,
        epochs=-(-total // iterations_per_epoch),
        enabled=runtime.is_main,
        every=params.log_every,
    )
    try:
        with progress:
            while not _finished(state, total) and not stop.requested:
                train_loader.set_epoch(state.epoch)
                _run_epoch(
                    net,
                    optimizer,
                    scaler,
                    train_loader,
                    state,
                    params,
                    runtime,
                    dtype,
                    torch_format,
                    total,
                    warmup,
                    iterations_per_epoch,
                    progress,
                    stop,
                    save,
                )
                if stop.requested:
                    break
                result = evaluate_model(
                    net,
                    eval_loader,
                    num_classes=num_classes,
                    runtime=runtime,
                    dtype=dtype,
                    memory_format=torch_format,
                )
                record = _close_epoch(
                    state,
                    result.as_metrics(eval_split),
                    eval_split,
                    params,
                    warmup,
                    iterations_per_epoch,
                )
                progress.epoch_done(record)
                if runtime.is_main:
                    write_json_atomic(paths.history, state.history)
                    if sink is not None:
                        sink.log_metrics(record, step=int(record["epoch"]))
                save(state)
            if stop.requested and not _finished(state, total):
                save(state)
                raise Interrupted(
                    f"stopped ({stop.reason}) at iteration {state.iteration}; "
                    f"checkpoint saved to {paths.checkpoint}"
                )
    finally:
        if restore_forward is not None:
            restore_forward()
    final = _write_outputs(
        dataset,
        data_dir,
        loader_params,
        params,
        model,
        kwargs,
        state,
        paths,
        runtime,
        provenance,
        config,
    )
    return TrainResult(final, state.history, model, state.iteration, state.run_id)


def _finished(state: TrainState, total: int) -> bool:
    """Whether the run is over: ``total`` iterations trained and the last epoch evaluated."""
    return state.iteration >= total and state.batch_in_epoch == 0


def _write_outputs(
    dataset: str,
    data_dir: Path,
    loader_params: LoaderParams,
    params: TrainParams,
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    state: TrainState,
    paths: TrainPaths,
    runtime: Runtime,
    provenance: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, float]:
    """The final metrics and the model file (rank 0); returns the metrics."""
    final = dict(state.history[-1]) if state.history else {}
    if runtime.is_main:
        write_json_atomic(paths.metrics, final)
        save_model(
            paths.model,
            model,
            name=params.model,
            kwargs=kwargs,
            preprocessing=_preprocessing(dataset, data_dir, loader_params),
            provenance={**provenance, "mlflow_run_id": state.run_id},
            metrics=final,
            config=config,
        )
    return final


def _cuda_graphs(
    model: torch.nn.Module,
    dataset: str,
    batch_size: int,
    params: TrainParams,
    runtime: Runtime,
    dtype: torch.dtype | None,
) -> Callable[[], None] | None:
    """Capture the training forward and backward as CUDA graphs if ``train.cuda_graphs`` asks
    and they apply (one CUDA device, no torch.compile); returns the undo, or None."""
    if not params.cuda_graphs:
        return None
    if runtime.device.type != "cuda" or runtime.distributed or params.compile:
        if runtime.is_main:
            print(
                "train.cuda_graphs: ignored (only for one CUDA device without train.compile)",
                file=sys.stderr,
            )
        return None
    from resnet_mlops.train.graphs import capture

    size = 32 if dataset == "cifar10" else 224
    example = torch.zeros(batch_size, 3, size, size, device=runtime.device)
    memory_format = torch.channels_last if params.channels_last else torch.contiguous_format
    try:
        return capture(model, example.contiguous(memory_format=memory_format), dtype)
    except RuntimeError as error:  # an operation the capture does not allow, say
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"train.cuda_graphs: capture failed ({first}); training without graphs", file=sys.stderr
        )
        model.__dict__.pop("forward", None)
        return None


def _shared_checkpoint(
    path: Path, model: str, resume: bool, runtime: Runtime
) -> dict[str, Any] | None:
    """Rank 0 decides whether to resume and reads the checkpoint; every rank gets a copy.

    Ranks on other nodes need not see rank 0's disk, and all ranks must start from the same
    state, whatever the number of ranks that wrote it (the checkpoint holds the unwrapped
    model and the global position in the run, nothing per rank).
    """
    if not runtime.distributed:
        return load_checkpoint(path, model=model) if resume else None
    message: list[Any] = [None]
    if runtime.is_main and resume:
        try:
            message[0] = load_checkpoint(path, model=model)
        except CheckpointError as error:
            message[0] = error
    dist.broadcast_object_list(message, src=0)
    if isinstance(message[0], CheckpointError):
        raise message[0]
    return message[0]


def _run_epoch(
    net,
    optimizer,
    scaler,
    loader: Loader,
    state: TrainState,
    params: TrainParams,
    runtime: Runtime,
    dtype,
    torch_format,
    total: int,
    warmup: int,
    iterations_per_epoch: int,
    progress: ProgressReporter,
    stop: StopRequest,
    save: Callable[[TrainState], None],
) -> None:
    """Train until the epoch ends, the run ends or SIGTERM; the state tracks every batch."""
    net.train()
    device = runtime.device
    sums = torch.tensor(
        [state.epoch_sums["loss"], state.epoch_sums["correct"], state.epoch_sums["seen"]],
        dtype=torch.float64,
        device=device,
    )
    skip = state.batch_in_epoch
    started = time.perf_counter()
    seconds_before = state.epoch_sums["seconds"]
    for index, (images, labels) in enumerate(loader):
        if index < skip:
            continue  # resuming mid-epoch: the same batches, already trained on
        if state.iteration >= total:
            break  # resumed from a checkpoint saved at the last iteration, before evaluating
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch_format)
        labels = labels.to(device, non_blocking=True)
        lr = learning_rate(
            state.iteration,
            optimizer=params.optimizer,
            schedule=params.schedule,
            warmup=warmup,
            iterations_per_epoch=iterations_per_epoch,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, dtype):
            logits = net(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=params.optimizer.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():  # summed on the device: no host sync per step
            # (A tensor made from a Python number would be a blocking host-to-device copy.)
            sums[0] += loss.detach().double() * len(labels)
            sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += len(labels)
        state.iteration += 1
        state.batch_in_epoch = index + 1
        progress.step(state.iteration, state.epoch, sums, lr, len(labels) * runtime.world_size)
        checkpoint_due = params.checkpoint_every and state.iteration % params.checkpoint_every == 0
        if checkpoint_due or stop.requested:
            _store_sums(state, sums, seconds_before + time.perf_counter() - started)
            if stop.requested:
                return
            save(state)
        if state.iteration >= total:
            break
    _store_sums(state, sums, seconds_before + time.perf_counter() - started)


def _store_sums(state: TrainState, sums: torch.Tensor, seconds: float) -> None:
    loss, correct, seen = sums.tolist()
    state.epoch_sums = {"loss": loss, "correct": correct, "seen": seen, "seconds": seconds}


def _close_epoch(
    state: TrainState,
    eval_metrics: dict[str, float],
    eval_split: str,
    params: TrainParams,
    warmup: int,
    iterations_per_epoch: int,
) -> dict[str, float]:
    sums = state.epoch_sums
    seen = max(sums["seen"], 1.0)
    record = {
        "epoch": float(state.epoch + 1),
        "iteration": float(state.iteration),
        "lr": learning_rate(
            state.iteration - 1,
            optimizer=params.optimizer,
            schedule=params.schedule,
            warmup=warmup,
            iterations_per_epoch=iterations_per_epoch,
        ),
        "train_loss": sums["loss"] / seen,
        "train_error": 100 * (1 - sums["correct"] / seen),
        "images_per_second": sums["seen"] / max(sums["seconds"], 1e-9),
        **{k.replace(f"{eval_split}_top1_error", "val_error"): v for k, v in eval_metrics.items()},
    }
    state.history.append(record)
    state.epoch += 1
    state.batch_in_epoch = 0
    state.epoch_sums = TrainState().epoch_sums
    return record


def _preprocessing(dataset: str, data_dir: Path, loader_params: LoaderParams) -> dict[str, Any]:
    """What a user must do to an image before this model sees it."""
    if dataset == "cifar10":
        stats = json.loads((data_dir / "stats.json").read_text())
        pixel = loader_params.cifar_normalization == "pixel"
        return {
            "dataset": "cifar10",
            "input_size": 32,
            "layout": "RGB, 0..255, subtract mean (image or channel), divide by std",
            "normalization": loader_params.cifar_normalization,
            "mean": stats["mean"],
            "std": stats["std"],
            "mean_image": torch.from_numpy(np.load(data_dir / "mean_image.npy")) if pixel else None,
            "classes": stats["classes"],
        }
    index = json.loads((data_dir / "index.json").read_text())
    return {
        "dataset": "imagenet",
        "input_size": 224,
        "resize": 256,
        "center_crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "classes": index["classes"],
    }
