"""Which samples a rank reads in an epoch, in what order, and with which augmentation seed: pure
functions of ``(seed, epoch)``, so that a run resumed at epoch ``e`` sees the batches an
uninterrupted run would have seen.

Both backends take their order from here, so for the same arguments they read the same samples
in the same order. Every epoch is one permutation of the whole split (drawn from
``(seed, epoch)``), dealt out round-robin to ``num_shards`` ranks: the ranks' parts are
disjoint, together they cover the split, and their sizes differ by at most one sample. Each rank
cuts its part into batches of ``batch_size``; the last batch holds the remainder and is neither
padded, nor dropped, nor filled from the next epoch, so every sample is read exactly once.
"""

from __future__ import annotations

import math

import numpy as np


def check_shard(shard_id: int, num_shards: int) -> None:
    """Raise ``ValueError`` unless ``0 <= shard_id < num_shards``."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards), got {shard_id} of {num_shards}")


def epoch_order(
    num_samples: int, *, epoch: int, seed: int, shuffle: bool, shard_id: int, num_shards: int
) -> np.ndarray:
    """The indices (int64) that rank ``shard_id`` reads in ``epoch``, in reading order."""
    check_shard(shard_id, num_shards)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    else:
        order = np.arange(num_samples)
    return order[shard_id::num_shards].astype(np.int64)


def shard_size(num_samples: int, shard_id: int, num_shards: int) -> int:
    """How many samples rank ``shard_id`` reads per epoch."""
    check_shard(shard_id, num_shards)
    return len(range(shard_id, num_samples, num_shards))


def num_batches(num_samples: int, batch_size: int) -> int:
    """Batches per epoch, the last one partial when ``batch_size`` does not divide the count."""
    return math.ceil(num_samples / batch_size)


def augmentation_seeds(num_samples: int, *, epoch: int, seed: int) -> np.ndarray:
    """One seed per sample (int64) for its random augmentation in ``epoch``: the same whatever
    the rank, the worker or the number of ranks that reads it."""
    return np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=num_samples)


def pipeline_seed(seed: int, epoch: int, shard_id: int) -> int:
    """The seed of a DALI pipeline that serves ``epoch`` on rank ``shard_id``."""
    return int(np.random.default_rng([seed, epoch, shard_id, 2]).integers(0, 2**31))
