"""``train``: the paper's recipes as one resumable loop, on CPU or GPU, one or many processes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from resnet_mlops.engine.checkpoint import CheckpointError, load_checkpoint
from resnet_mlops.engine.runtime import Runtime, setup_runtime, teardown_runtime
from resnet_mlops.train.progress import ProgressReporter
from resnet_mlops.train.stop import StopRequest
from resnet_mlops.train.trainer import (
    Trainer,
    TrainJob,
    TrainPaths,
    TrainState,
    eval_split,
    num_classes,
)

__all__ = [
    "Interrupted",
    "MetricSink",
    "TrainJob",
    "TrainPaths",
    "TrainResult",
    "TrainState",
    "eval_split",
    "num_classes",
    "train",
]


class MetricSink(Protocol):
    """Where per-epoch metrics go besides the history file (the MLflow tracker)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


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


def train(
    job: TrainJob,
    *,
    resume: bool = False,
    sink: MetricSink | None = None,
    on_start: Callable[[TrainState], str | None] | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train ``job.params.model`` on preprocessed data; resumable, distributed under torchrun.

    Args:
        job: what to train on which data, where to write, what the outputs record. A resumed
            checkpoint written under another ``job.resume_key`` (or none) keeps no key: it
            matches nothing.
        resume: continue from ``job.paths.checkpoint``; an error if it does not exist. A
            checkpoint that has already finished is not trained further: the outputs are
            rewritten from it (``TrainResult.rebuilt``) and ``on_start`` is not called.
        sink: receives each epoch's metrics (rank 0 only).
        on_start: called once on rank 0 with the state (holding the run id of a resumed run);
            returns the run id to store in checkpoints.
        stop: polled between batches; default: one set by SIGTERM during the call.

    Raises:
        CheckpointError: ``resume`` and the checkpoint is missing, corrupt, of another model
            or past the end of this schedule.
        Interrupted: a stop was requested; a checkpoint was saved first.
    """
    stop = stop or StopRequest()
    runtime = setup_runtime(job.params.device)
    try:
        with stop.on_sigterm():
            checkpoint = _shared_checkpoint(job.paths.checkpoint, job.params.model, resume, runtime)
            trainer = Trainer(job, runtime)
            if checkpoint is not None:
                trainer.restore(checkpoint)
                if trainer.finished:
                    # Finished already (a run killed after its last checkpoint): write the
                    # outputs from it rather than train 0 iterations; the MLflow run is the
                    # caller's to settle.
                    trainer.write_history()
                    return _result(trainer, rebuilt=True)
            if runtime.is_main and on_start is not None:
                trainer.state.run_id = on_start(trainer.state)
            if checkpoint is None:
                # At once, before any batch: the checkpoint now names this run's MLflow run,
                # so a run killed from here on is resumed (and its MLflow run ended) by the
                # next --auto-resume, and an older checkpoint that this run does not continue
                # is gone.
                trainer.save()
            _fit(trainer, sink, stop)
            return _result(trainer)
    finally:
        teardown_runtime(runtime)


def _result(trainer: Trainer, *, rebuilt: bool = False) -> TrainResult:
    """Write the final metrics and model file, and say what was trained."""
    final = trainer.write_outputs()
    state = trainer.state
    return TrainResult(final, state.history, trainer.model, state.iteration, state.run_id, rebuilt)


def _fit(trainer: Trainer, sink: MetricSink | None, stop: StopRequest) -> None:
    """Train and evaluate epoch after epoch until the schedule ends or a stop.

    Raises:
        Interrupted: a stop was requested; a checkpoint was saved first.
    """
    runtime, params = trainer.runtime, trainer.params
    restore_forward = _cuda_graphs(trainer)
    if params.compile:
        trainer.net = torch.compile(trainer.net)
    if runtime.distributed:
        trainer.net = DistributedDataParallel(
            trainer.net,
            device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
        )
    progress = ProgressReporter(
        total=trainer.total,
        epochs=-(-trainer.total // trainer.iterations_per_epoch),
        enabled=runtime.is_main,
        every=params.log_every,
    )
    try:
        with progress:
            while not trainer.finished and not stop.requested:
                trainer.train_loader.set_epoch(trainer.state.epoch)
                trainer.run_epoch(progress, stop)
                if stop.requested:
                    break
                record = trainer.close_epoch()
                progress.epoch_done(record)
                trainer.write_history()
                if runtime.is_main and sink is not None:
                    sink.log_metrics(record, step=int(record["epoch"]))
                trainer.save()
            if stop.requested and not trainer.finished:
                trainer.save()
                raise Interrupted(
                    f"stopped ({stop.reason}) at iteration {trainer.state.iteration}; "
                    f"checkpoint saved to {trainer.job.paths.checkpoint}"
                )
    finally:
        if restore_forward is not None:
            restore_forward()


def _cuda_graphs(trainer: Trainer) -> Callable[[], None] | None:
    """Capture the training forward and backward as CUDA graphs if ``train.cuda_graphs`` asks
    and they apply (one CUDA device, no torch.compile); returns the undo, or None."""
    model, params, runtime = trainer.model, trainer.params, trainer.runtime
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

    size = 32 if trainer.job.dataset == "cifar10" else 224
    example = torch.zeros(trainer.per_rank_batch, 3, size, size, device=runtime.device)
    try:
        return capture(model, example.contiguous(memory_format=trainer.torch_format), trainer.dtype)
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
