"""The fallback: ``torch.utils.data`` datasets and a DataLoader behind the loader interface.

Same sample order as the DALI path (:mod:`~resnet_mlops.data.loaders.epochs`), same
augmentations (:mod:`~resnet_mlops.data.loaders.torch_transforms`), same output contract.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import random
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from resnet_mlops.data.loaders.cifar_arrays import CifarSplit
from resnet_mlops.data.loaders.epochs import (
    augmentation_seeds,
    epoch_order,
    num_batches,
    shard_size,
)
from resnet_mlops.data.loaders.jpeg_shards import JpegShards
from resnet_mlops.data.loaders.recipe import to_memory_format
from resnet_mlops.data.loaders.spec import LoaderSpec
from resnet_mlops.data.loaders.torch_transforms import (
    ImagenetTransform,
    decode_error_reason,
    decode_rgb,
)
from resnet_mlops.errors import DataError


@dataclass(frozen=True)
class Failure:
    """A sample that could not be produced. Raising in a worker would reach the main process
    as a multi-line traceback; a marker lets the loader raise one clean line instead."""

    message: str


class CifarDataset(Dataset):
    """CIFAR-10 samples: ``(x - shift) * scale`` in float32, CHW, then ``augment``."""

    def __init__(
        self,
        split: CifarSplit,
        shift: np.ndarray,
        scale: np.ndarray,
        augment: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.images = torch.from_numpy(split.images)
        self.labels = split.labels
        self.shift, self.scale = torch.from_numpy(shift), torch.from_numpy(scale)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image = ((self.images[index] - self.shift) * self.scale).permute(2, 0, 1)
        if self.augment is not None:
            seed_sample(seed)
            image = self.augment(image)
        return image.contiguous(), int(self.labels[index])


class ImagenetDataset(Dataset):
    """ImageNet samples decoded from their shards with torchvision, then ``transform``."""

    def __init__(self, shards: JpegShards, transform: ImagenetTransform) -> None:
        self.shards, self.transform = shards, transform

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | Failure:
        index, seed = key
        try:
            image = decode_rgb(self.shards.jpeg(index))
        except DataError as error:
            return Failure(str(error))
        except RuntimeError as error:
            reason = decode_error_reason(error)
            return Failure(f"{self.shards.describe(index)}: cannot decode JPEG ({reason})")
        seed_sample(seed)
        return self.transform(image), int(self.shards.labels[index])


def collate(samples: Sequence[Any]) -> Any:
    """``default_collate``, or the first :class:`Failure` of the batch."""
    for sample in samples:
        if isinstance(sample, Failure):
            return sample
    return default_collate(samples)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` in :func:`~.epochs.epoch_order` for the current
    epoch; the seed comes from :func:`~.epochs.augmentation_seeds`."""

    def __init__(
        self, num_samples: int, *, shuffle: bool, seed: int, shard_id: int, num_shards: int
    ):
        self.total, self.shuffle, self.seed = num_samples, shuffle, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.epoch = 0

    def __len__(self) -> int:
        return shard_size(self.total, self.shard_id, self.num_shards)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(
            self.total,
            epoch=self.epoch,
            seed=self.seed,
            shuffle=self.shuffle,
            shard_id=self.shard_id,
            num_shards=self.num_shards,
        )
        seeds = augmentation_seeds(self.total, epoch=self.epoch, seed=self.seed)
        return zip(order.tolist(), seeds[order].tolist(), strict=True)


def seed_sample(seed: int) -> None:
    """Seed the random streams torchvision's transforms draw from, for one sample.

    This runs in a DataLoader worker process, whose global streams are its own; it makes a
    sample's augmentation depend on its seed alone, not on which worker drew it or when.
    (``torch.manual_seed`` would also visit every accelerator backend: 60 us, not 1.)
    """
    torch.default_generator.manual_seed(seed)
    random.seed(seed)


def ignore_sigterm(worker_id: int) -> None:
    """A DataLoader worker's start: leave SIGTERM to the main process.

    ``docker stop``, a scheduler or a terminal signals the whole process group. A worker that
    died of it would make the main process fail at once ("DataLoader worker ... is killed by
    signal: Terminated") instead of saving its checkpoint; the main process stops its workers
    itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_context() -> multiprocessing.context.BaseContext | None:
    """How to start DataLoader workers: the default (``fork``), or a fork server once this
    process has run a DALI pipeline.

    DALI's pipelines leave worker threads behind, and a child forked from a process with
    threads can deadlock on a lock one of them held (seen here: workers hanging mid-epoch).
    The fork server is a clean, single-threaded process; preloading torch into it keeps worker
    start-up fast. Like ``spawn``, it needs the main script to be importable (a file with an
    ``if __name__ == "__main__"`` guard).
    """
    if not dali_pipelines_built():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", __name__])
    return context


def dali_pipelines_built() -> bool:
    """Whether this process has built a DALI pipeline (DALI is imported only to be used)."""
    module = sys.modules.get("resnet_mlops.data.loaders.dali_graphs")
    return bool(module and module.PIPELINES_BUILT)


class TorchLoader:
    """Iterates ``(images, labels)`` from a DataLoader; the same epoch rules as the DALI loader."""

    backend = "torch"

    def __init__(self, dataset: Dataset, spec: LoaderSpec, device: torch.device) -> None:
        """Read ``dataset`` as ``spec`` asks, onto ``device`` (``spec.device`` resolved).

        ``spec.params.num_threads`` is the number of worker processes.
        """
        self.sampler = EpochSampler(
            len(dataset),
            shuffle=spec.training,
            seed=spec.seed,
            shard_id=spec.shard_id,
            num_shards=spec.num_shards,
        )
        self.num_samples = len(self.sampler)
        self.batch_size = spec.batch_size
        self.device, self.memory_format = device, spec.memory_format
        self.loader = DataLoader(
            dataset,
            batch_size=spec.batch_size,
            sampler=self.sampler,
            num_workers=spec.params.num_threads,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            drop_last=False,
            persistent_workers=True,
            worker_init_fn=ignore_sigterm,
            multiprocessing_context=worker_context(),
        )

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads."""
        return self.sampler.epoch

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch``'s order."""
        self.sampler.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        finished = False
        try:
            for batch in self.loader:
                if isinstance(batch, Failure):
                    raise DataError(batch.message)
                images, labels = batch
                # Copied from the pinned batch first, then laid out on the device: a layout
                # change on the host would make an unpinned copy, a blocking transfer.
                non_blocking = self.device.type == "cuda"
                images = images.to(self.device, non_blocking=non_blocking)
                yield (
                    to_memory_format(images, self.memory_format),
                    labels.to(self.device, non_blocking=non_blocking),
                )
            finished = True
        finally:
            if not finished:
                self._stop_workers()
        self.sampler.epoch += 1

    def _stop_workers(self) -> None:
        # A pass that ends early (an error, a break) leaves persistent workers with batches in
        # flight. Left to the garbage collector, their shutdown can stall for the DataLoader's
        # 5 s join timeout at some random later point; stop them now (the next pass starts
        # fresh ones). DataLoader has no public call for this.
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None
