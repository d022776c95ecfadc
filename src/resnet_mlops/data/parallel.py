"""Ordered parallel map over cores with a progress bar."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

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


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    description: str,
    total: int | None = None,
    chunksize: int = 64,
    window: int = 8192,
) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, results in input order, with progress.

    Order is what keeps outputs byte-identical from run to run, whatever the worker count.
    Items are taken ``window`` at a time, so a stream larger than memory (ImageNet's
    bytes) is never read ahead whole. One worker runs in this process (no pickling).
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
            while batch := list(itertools.islice(iterator, window)):
                for result in pool.imap(fn, batch, chunksize=chunksize):
                    yield result
                    progress.advance(task)
