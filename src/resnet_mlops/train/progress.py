"""Progress for long runs: a live bar on a terminal, plain lines in logs (DVC, Prefect)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_SECONDS = 30.0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressReporter:
    """Shows iteration, epoch, loss, training error, learning rate, images/s and ETA.

    The device is synchronised only every ``every`` iterations, when the running sums are read.
    """

    def __init__(self, *, total: int, epochs: int, enabled: bool, every: int) -> None:
        self.total, self.epochs, self.enabled, self.every = total, epochs, enabled, max(every, 1)
        self.live = enabled and sys.stdout.isatty()
        self._bar: Progress | None = None
        self._task = None
        self._mark = (time.perf_counter(), 0, 0)  # time, iteration, images at the last report
        self._images = 0
        self._reported = False

    def __enter__(self) -> ProgressReporter:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} it"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, status="")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)

    def step(self, iteration: int, epoch: int, sums: torch.Tensor, lr: float, images: int) -> None:
        """Called after every iteration; reports every ``every`` iterations."""
        self._images += images
        if not self.enabled:
            return
        # The first step this run makes (1, or the one after a resumed checkpoint) is reported
        # at once: a log shows within seconds that training started and how fast it goes.
        due = iteration % self.every == 0 or iteration == self.total or not self._reported
        # In a log (DVC, Prefect, CI) there is no live bar: a line every LOG_SECONDS at the
        # latest, so a slow CPU run shows it is alive well before `every` iterations.
        if not due and not self.live:
            due = time.perf_counter() - self._mark[0] >= LOG_SECONDS
        if not due:
            return
        if not self._reported:  # rates and ETA count from where this run started (or resumed)
            self._mark = (self._mark[0], iteration - 1, 0)
        loss, correct, seen = sums.tolist()
        now = time.perf_counter()
        then, first_iteration, first_images = self._mark
        rate = (self._images - first_images) / max(now - then, 1e-9)
        per_iteration = (now - then) / max(iteration - first_iteration, 1)
        eta = _duration(per_iteration * (self.total - iteration))
        self._mark = (now, iteration, self._images)
        self._reported = True
        status = (
            f"epoch {epoch + 1}/{self.epochs} loss {loss / max(seen, 1):.4f} "
            f"err {100 * (1 - correct / max(seen, 1)):.2f}% lr {lr:.4g} {rate:,.0f} img/s"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=iteration, status=status)
        else:
            print(f"it {iteration}/{self.total} {status} ETA {eta}", flush=True)

    def epoch_done(self, record: dict[str, float]) -> None:
        """One line per epoch, on a terminal and in logs alike."""
        if not self.enabled:
            return
        # Without a validation split the end-of-epoch evaluation is on the test set.
        split = "val" if "val_loss" in record else "test"
        line = (
            f"epoch {int(record['epoch'])}/{self.epochs}: train loss {record['train_loss']:.4f} "
            f"err {record['train_error']:.2f}% | {split} loss {record.get(f'{split}_loss', 0):.4f} "
            f"err {record['val_error']:.2f}% | lr {record['lr']:.4g} | "
            f"{record['images_per_second']:,.0f} img/s"
        )
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, flush=True)
