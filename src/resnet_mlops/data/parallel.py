"""Ordered parallel map over cores with a progress bar."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    """``0`` means every core this process may use."""
    return workers if workers > 0 else len(os.sched_getaffinity(0))


def progress_bar() -> Progress:
    """A progress bar with counts, rate and ETA (plain lines when not on a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


# What ordered_map reads ahead of its workers, at most (plus one item): a window of 8192
# ImageNet JPEGs is about 1 GB; 8192 files at the 64 MiB cap would be 512 GiB.
WINDOW_BYTES = 2**30


def _take(
    iterator: Iterator[T], count: int, weight: Callable[[T], int] | None, budget: int
) -> list[T]:
    """The next ``count`` items, or fewer once their total ``weight`` reaches ``budget``."""
    if weight is None:
        return list(itertools.islice(iterator, count))
    batch: list[T] = []
    total = 0
    for item in iterator:
        batch.append(item)
        total += weight(item)
        if len(batch) >= count or total >= budget:
            break
    return batch


@dataclass(frozen=True)
class ReadAhead:
    """How :func:`ordered_map` feeds its workers: tuning only, results do not depend on it.

    Attributes:
        chunksize: items sent to a worker at a time.
        window: items read ahead of the workers, at most.
        weight: an item's size in bytes, or None to count items alone.
        window_weight: with ``weight``, the bytes read ahead, about (one item may pass it).
    """

    chunksize: int = 64
    window: int = 8192
    weight: Callable[[Any], int] | None = None
    window_weight: int = WINDOW_BYTES


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    description: str,
    total: int | None = None,
    read_ahead: ReadAhead = ReadAhead(),  # noqa: B008 (frozen, so a shared default is safe)
) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, results in input order, with progress.

    Order is what keeps outputs byte-identical from run to run, whatever the worker count.
    Items are taken ``read_ahead.window`` at a time, and with ``read_ahead.weight`` no more
    than about ``read_ahead.window_weight`` bytes at a time, so a stream larger than memory
    (ImageNet's bytes, or an archive of many large members) is never read ahead whole. One
    worker runs in this process (no pickling).
    """
    workers = resolve_workers(workers)
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        if workers == 1:
            for item in items:
                yield fn(item)
                progress.advance(task)
            return
        # fork keeps start-up cheap; the workers only run pure decode functions.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            iterator = iter(items)
            ahead = read_ahead
            while batch := _take(iterator, ahead.window, ahead.weight, ahead.window_weight):
                for result in pool.imap(fn, batch, chunksize=ahead.chunksize):
                    yield result
                    progress.advance(task)
