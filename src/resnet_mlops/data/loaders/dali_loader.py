"""DALI pipelines behind the loader interface: epochs, sharding, PyTorch tensors, clean errors."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from resnet_mlops.data.loaders.epochs import (
    epoch_order,
    num_batches,
    pipeline_seed,
    shard_size,
)
from resnet_mlops.data.loaders.spec import LoaderSpec
from resnet_mlops.errors import DataError

# Batches DALI may have taken from the feeder and not yet returned: the pipeline's prefetch
# depth (2) plus the one being computed, with a margin.
IN_FLIGHT = 4


class BatchFeeder:
    """The ``external_source`` callable: one epoch's order, cut into batches, fetched on demand.

    Attributes:
        recent: the index arrays of the last few batches handed to DALI, to name the culprit
            when the pipeline fails.
    """

    def __init__(self, fetch: Callable[[np.ndarray], tuple[Any, Any]], batch_size: int) -> None:
        self.fetch = fetch
        self.batch_size = batch_size
        self.order = np.zeros(0, dtype=np.int64)
        self.position = 0
        self.recent: deque[np.ndarray] = deque(maxlen=IN_FLIGHT)

    def start(self, order: np.ndarray) -> None:
        """Begin an epoch that reads ``order``."""
        self.order, self.position = order, 0
        self.recent.clear()

    def __call__(self) -> tuple[Any, Any]:
        if self.position >= len(self.order):
            raise StopIteration
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        self.recent.append(batch)
        return self.fetch(batch)


class DaliLoader:
    """Iterates ``(images, labels)`` batches from a DALI pipeline, one epoch per pass.

    Each pass reads the order :func:`~resnet_mlops.data.loaders.epochs.epoch_order` gives for
    the current epoch, which then advances by one; :meth:`set_epoch` chooses it explicitly.
    Every pass builds a fresh pipeline seeded from ``(seed, epoch, shard_id)``: DALI's random
    operators cannot be re-seeded, and this makes an epoch's augmentation independent of the
    passes before it (so a resumed run repeats it), and leaves no batch of an abandoned pass
    in flight. A build takes milliseconds on the CPU.
    """

    backend = "dali"

    def __init__(
        self,
        spec: LoaderSpec,
        *,
        num_samples: int,
        make_pipeline: Callable[[BatchFeeder, int], Pipeline],
        fetch: Callable[[np.ndarray], tuple[Any, Any]],
        find_culprit: Callable[[np.ndarray, str], DataError],
    ) -> None:
        """Read ``num_samples`` (the whole split) as ``spec`` asks.

        Args:
            spec: batch size, shuffling, seed, this rank's shard and the memory format.
            num_samples: samples in the whole split, all ranks together.
            make_pipeline: builds a pipeline that reads the feeder, with the given seed.
            fetch: the samples of a batch of indices, as the pipeline's input takes them.
            find_culprit: the error to raise for a failed pass, given the indices in flight.
        """
        self.num_samples = shard_size(num_samples, spec.shard_id, spec.num_shards)
        self.batch_size = spec.batch_size
        self.epoch = 0
        self._total = num_samples
        self._shuffle, self._seed = spec.training, spec.seed
        self._shard_id, self._num_shards = spec.shard_id, spec.num_shards
        self._hwc = spec.hwc
        self._make_pipeline, self._find_culprit = make_pipeline, find_culprit
        self._feeder = BatchFeeder(fetch, spec.batch_size)
        self._iterator: DALIGenericIterator | None = None

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass read epoch ``epoch``'s order."""
        self.epoch = epoch

    def _start(self) -> DALIGenericIterator:
        order = epoch_order(
            self._total,
            epoch=self.epoch,
            seed=self._seed,
            shuffle=self._shuffle,
            shard_id=self._shard_id,
            num_shards=self._num_shards,
        )
        self._feeder.start(order)
        self._iterator = None  # release the previous pass's pipeline before building one
        self._iterator = DALIGenericIterator(
            self._make_pipeline(
                self._feeder, pipeline_seed(self._seed, self.epoch, self._shard_id)
            ),
            ["images", "labels"],
            prepare_first_batch=False,
        )
        return self._iterator

    def _convert(self, images: torch.Tensor) -> torch.Tensor:
        if self._hwc:  # DALI wrote (..., H, W, C): a view with NCHW shape and NHWC strides
            return images.movedim(-1, -3)
        return images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        iterator = self._start()
        while True:
            try:
                (batch,) = next(iterator)
            except StopIteration:
                break
            except DataError:
                self._iterator = None
                raise
            except Exception as error:  # DALI reports a failed batch as a long RuntimeError
                self._iterator = None
                recent = np.concatenate(list(self._feeder.recent) or [np.zeros(0, np.int64)])
                raise self._find_culprit(recent, str(error)) from None
            yield self._convert(batch["images"]), batch["labels"].reshape(-1)
        self._iterator = None
        self.epoch += 1
