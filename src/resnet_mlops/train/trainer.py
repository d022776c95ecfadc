"""``Trainer``: the model, optimizer, loaders and position of one run, and its steps."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader, evaluation_split
from resnet_mlops.engine.artifact import model_kwargs, save_model, state_dict_of
from resnet_mlops.engine.checkpoint import CheckpointError, save_checkpoint
from resnet_mlops.engine.metrics import evaluate_model
from resnet_mlops.engine.runtime import (
    Runtime,
    autocast,
    resolve_precision,
    rng_state,
    seed_everything,
    set_rng_state,
)
from resnet_mlops.io import write_json_atomic
from resnet_mlops.models import build_model
from resnet_mlops.params.base import to_dict
from resnet_mlops.params.train import TrainParams
from resnet_mlops.train.progress import ProgressReporter
from resnet_mlops.train.schedule import learning_rate, to_iterations, warmup_iterations
from resnet_mlops.train.stop import StopRequest


@dataclass(frozen=True)
class TrainPaths:
    """Where ``train`` writes: the resumable checkpoint, the final model, metrics and curves."""

    checkpoint: Path
    model: Path
    metrics: Path
    history: Path
    headline: Path | None = None  # COMPARED_METRICS alone: the stage's DVC metrics


# The figures experiments are compared by: the train stage's DVC metrics, the few columns of
# `dvc exp show`. Everything else (losses, lr, top-5, iteration) stays in ``metrics``.
COMPARED_METRICS = ("train_error", "val_error", "images_per_second")


@dataclass(frozen=True)
class TrainJob:
    """What to train on which data, where to write, and what the outputs record of it.

    Attributes:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        params: the ``train`` section.
        loader: the ``loader`` section.
        data_dir: the preprocessed data (``data/preprocessed/<dataset>``).
        paths: where to write (rank 0 only).
        config: the whole parsed params, stored in checkpoints and the model file.
        provenance: data version, git commit etc., stored in the model file.
        resume_key: what this run was started with (see ``train.resume``), stored in its
            checkpoints so that ``--auto-resume`` continues only them.
    """

    dataset: str
    params: TrainParams
    loader: LoaderParams
    data_dir: Path
    paths: TrainPaths
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    resume_key: dict[str, Any] | None = None


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


def num_classes(dataset: str, data_dir: Path) -> int:
    """The number of classes of a preprocessed data set."""
    if dataset == "cifar10":
        return 10
    return len(json.loads((data_dir / "index.json").read_text())["classes"])


def eval_split(dataset: str, data_dir: Path) -> str:
    """The split evaluated after each epoch."""
    if dataset == "cifar10":
        return evaluation_split(data_dir)
    return "val"


class Trainer:
    """One run on one rank: built in a fixed order (seed, loaders, model, optimizer) so that a
    resumed run draws the same random numbers as the run it continues.

    ``net`` is what the batches go through (compiled, DDP-wrapped); ``model`` is the plain
    module that checkpoints and the model file hold.
    """

    def __init__(self, job: TrainJob, runtime: Runtime) -> None:
        params = job.params
        seed_everything(params.seed, params.deterministic)
        if params.batch_size % runtime.world_size:
            raise ValueError(
                f"train.batch_size {params.batch_size} is not divisible by "
                f"{runtime.world_size} ranks"
            )
        self.job, self.params, self.runtime = job, params, runtime
        self.key = job.resume_key
        self.torch_format = torch.channels_last if params.channels_last else torch.contiguous_format
        self.per_rank_batch = params.batch_size // runtime.world_size
        self.eval_split = eval_split(job.dataset, job.data_dir)
        self.train_loader = self._loader("train", train=True)
        self.eval_loader = self._loader(self.eval_split, train=False)
        self.num_classes = num_classes(job.dataset, job.data_dir)
        self.iterations_per_epoch = len(self.train_loader)
        self.total = to_iterations(params.schedule.length, params.schedule, len(self.train_loader))
        self.warmup = warmup_iterations(params.schedule, params.model, len(self.train_loader))
        self.kwargs = model_kwargs(
            params.model, params.shortcut, params.zero_init_residual, self.num_classes
        )
        self.model = build_model(params.model, **self.kwargs).to(
            runtime.device, memory_format=self.torch_format
        )
        self.net: torch.nn.Module = self.model
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=params.optimizer.lr,
            momentum=params.optimizer.momentum,
            weight_decay=params.optimizer.weight_decay,
            nesterov=params.optimizer.nesterov,
        )
        self.dtype = resolve_precision(params.precision, runtime.device)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=self.dtype == torch.float16)
        self.state = TrainState()

    def _loader(self, split: str, *, train: bool) -> Any:
        return build_loader(
            LoaderSpec(
                self.job.dataset,
                split,
                self.job.data_dir,
                self.per_rank_batch,
                train=train,
                params=self.job.loader,
                memory_format="channels_last" if self.params.channels_last else "contiguous",
                shard_id=self.runtime.rank,
                num_shards=self.runtime.world_size,
                seed=self.params.seed,
                device=self.runtime.device,
            )
        )

    @property
    def finished(self) -> bool:
        """Whether the run is over: every iteration trained and the last epoch evaluated."""
        return self.state.iteration >= self.total and self.state.batch_in_epoch == 0

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint``: weights, optimizer, scaler, RNG and position.

        Raises:
            CheckpointError: of another model, or past the end of this schedule.
        """
        path = self.job.paths.checkpoint
        try:
            self.model.load_state_dict(checkpoint["model_state"])
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"{path}: does not fit this model ({error})") from None
        self.scaler.load_state_dict(checkpoint["scaler_state"])
        set_rng_state(checkpoint["rng"])
        self.state = TrainState(**checkpoint["train_state"])
        if self.state.iteration > self.total:
            raise CheckpointError(
                f"{path}: at iteration {self.state.iteration}, past the end of this "
                f"schedule ({self.total} iterations)"
            )
        if checkpoint.get("resume_key") != self.key:
            self.key = None  # a hybrid of two configurations: never auto-resumed

    def save(self) -> None:
        """Write the checkpoint (rank 0)."""
        if not self.runtime.is_main:
            return
        save_checkpoint(
            self.job.paths.checkpoint,
            {
                "model": self.params.model,
                "model_state": state_dict_of(self.model),
                "optimizer_state": self.optimizer.state_dict(),
                "scaler_state": self.scaler.state_dict(),
                "rng": rng_state(),
                "train_state": to_dict(self.state),
                "config": self.job.config,
                "resume_key": self.key,
            },
        )

    def learning_rate(self, iteration: int) -> float:
        """The schedule's rate at ``iteration``."""
        return learning_rate(
            iteration,
            optimizer=self.params.optimizer,
            schedule=self.params.schedule,
            warmup=self.warmup,
            iterations_per_epoch=self.iterations_per_epoch,
        )

    def step(self, images: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor) -> float:
        """One optimizer step on a batch, added to the epoch's ``sums``; returns the rate."""
        device = self.runtime.device
        images = images.to(device, non_blocking=True).contiguous(memory_format=self.torch_format)
        labels = labels.to(device, non_blocking=True)
        lr = self.learning_rate(self.state.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, self.dtype):
            logits = self.net(images)
            loss = F.cross_entropy(
                logits, labels, label_smoothing=self.params.optimizer.label_smoothing
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():  # summed on the device: no host sync per step
            # (A tensor made from a Python number would be a blocking host-to-device copy.)
            sums[0] += loss.detach().double() * len(labels)
            sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += len(labels)
        return lr

    def run_epoch(self, progress: ProgressReporter, stop: StopRequest) -> None:
        """Train until the epoch ends, the run ends or a stop; the state tracks every batch."""
        self.net.train()
        state = self.state
        sums = torch.tensor(
            [state.epoch_sums["loss"], state.epoch_sums["correct"], state.epoch_sums["seen"]],
            dtype=torch.float64,
            device=self.runtime.device,
        )
        skip = state.batch_in_epoch
        started = time.perf_counter()
        seconds_before = state.epoch_sums["seconds"]

        def seconds() -> float:
            return seconds_before + time.perf_counter() - started

        every = self.params.checkpoint_every
        for index, (images, labels) in enumerate(self.train_loader):
            if index < skip:
                continue  # resuming mid-epoch: the same batches, already trained on
            if state.iteration >= self.total:
                break  # resumed from a checkpoint saved at the last iteration, before evaluating
            lr = self.step(images, labels, sums)
            state.iteration += 1
            state.batch_in_epoch = index + 1
            images_seen = len(labels) * self.runtime.world_size
            progress.step(state.iteration, state.epoch, sums, lr, images_seen)
            if (every and state.iteration % every == 0) or stop.requested:
                _store_sums(state, sums, seconds())
                if stop.requested:
                    return
                self.save()
            if state.iteration >= self.total:
                break
        _store_sums(state, sums, seconds())

    def close_epoch(self) -> dict[str, float]:
        """Evaluate, append the epoch's record to the history and start the next epoch."""
        result = evaluate_model(
            self.net,
            self.eval_loader,
            num_classes=self.num_classes,
            runtime=self.runtime,
            dtype=self.dtype,
            memory_format=self.torch_format,
        )
        state, split = self.state, self.eval_split
        sums = state.epoch_sums
        seen = max(sums["seen"], 1.0)
        record = {
            "epoch": float(state.epoch + 1),
            "iteration": float(state.iteration),
            "lr": self.learning_rate(state.iteration - 1),
            "train_loss": sums["loss"] / seen,
            "train_error": 100 * (1 - sums["correct"] / seen),
            "images_per_second": sums["seen"] / max(sums["seconds"], 1e-9),
            **{
                k.replace(f"{split}_top1_error", "val_error"): v
                for k, v in result.as_metrics(split).items()
            },
        }
        state.history.append(record)
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_sums = TrainState().epoch_sums
        return record

    def write_history(self) -> None:
        """The per-epoch records so far (rank 0)."""
        if self.runtime.is_main:
            write_json_atomic(self.job.paths.history, self.state.history)

    def write_outputs(self) -> dict[str, float]:
        """The final metrics and the model file (rank 0); returns the metrics."""
        job = self.job
        final = dict(self.state.history[-1]) if self.state.history else {}
        if self.runtime.is_main:
            write_json_atomic(job.paths.metrics, final)
            if job.paths.headline is not None:
                headline = {key: final[key] for key in COMPARED_METRICS if key in final}
                write_json_atomic(job.paths.headline, headline)
            save_model(
                job.paths.model,
                self.model,
                name=self.params.model,
                kwargs=self.kwargs,
                preprocessing=preprocessing(job.dataset, job.data_dir, job.loader),
                provenance={**job.provenance, "mlflow_run_id": self.state.run_id},
                metrics=final,
                config=job.config,
            )
        return final


def _store_sums(state: TrainState, sums: torch.Tensor, seconds: float) -> None:
    loss, correct, seen = sums.tolist()
    state.epoch_sums = {"loss": loss, "correct": correct, "seen": seen, "seconds": seconds}


def preprocessing(dataset: str, data_dir: Path, loader_params: LoaderParams) -> dict[str, Any]:
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
