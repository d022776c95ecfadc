"""The local metric history: a JSON Lines journal that outlives the tracking server.

One line per :meth:`RunTracker.log_metrics` call, appended and flushed as it happens, so a
crash or a server that never comes back loses nothing. A journal, not a finished output: the
last line of a killed process may be cut short, and :func:`read_history` skips it.

    {"run_id": "3f2a...", "step": 100, "timestamp": 1718000000000, "metrics": {"train_loss": 2.1}}
    {"run_id": "3f2a...", "timestamp": 1718000900000, "status": "FINISHED"}
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MetricRecord:
    """The metrics logged at one step.

    Attributes:
        step: The training step (iteration or epoch, as the caller counts).
        timestamp: Milliseconds since the epoch. Kept so that sending a record twice stores
            it once: MLflow's SQL store keys a metric value on (key, value, timestamp, step).
        metrics: Metric name to value.
        run_id: The MLflow run the values belong to; None when no run could be opened.
    """

    step: int
    timestamp: int
    metrics: Mapping[str, float]
    run_id: str | None = None

    def to_mlflow(self) -> list[Metric]:
        """One MLflow :class:`~mlflow.entities.Metric` per value."""
        return [Metric(k, v, self.timestamp, self.step) for k, v in self.metrics.items()]


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """How the run ended, as the tracker tried to tell the server."""

    status: str
    timestamp: int
    run_id: str | None = None


class HistoryJournal:
    """Appends records to a history file, flushing each line."""

    def __init__(self, path: Path, *, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: MetricRecord | RunEnd) -> None:
        """Append one record and flush it to the OS (not fsync: a crash of the process, not of
        the machine, is the case this guards against)."""
        self._file.write(json.dumps(dataclasses.asdict(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def read_history(path: Path) -> tuple[list[MetricRecord], RunEnd | None]:
    """The metric records of a history file, and the last run end it recorded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a record (the message names the line).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[MetricRecord] = []
    end: RunEnd | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if "status" in data:
                end = RunEnd(**data)
            else:
                records.append(MetricRecord(**data))
        except (ValueError, TypeError) as error:
            if number == len(lines):  # Cut short by a kill mid-write.
                log.warning("%s:%d: skipping an incomplete last line", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a metric record ({error})") from None
    return records, end


def replay_metrics(
    history_file: Path, run_id: str | None = None, *, tracking_uri: str | None = None
) -> int:
    """Log a saved metric history to a run, e.g. after the server was down at the end.

    Safe to repeat, and safe for values that did reach the server: records keep their
    original timestamps, and the SQL store keeps one copy of identical values. If the history
    records how the run ended and the run is still RUNNING, the run is ended that way too.

    Args:
        history_file: A history written by :class:`RunTracker`.
        run_id: The run to log to; None logs each record to the run it was recorded for.
        tracking_uri: None uses MLflow's own resolution (``MLFLOW_TRACKING_URI``).

    Returns:
        The number of metric values sent.

    Raises:
        ValueError: a record has no run id and none was given.
    """
    records, end = read_history(history_file)
    by_run: dict[str, list[Metric]] = {}
    for record in records:
        target = run_id or record.run_id
        if target is None:
            raise ValueError(f"{history_file}: step {record.step} has no run id; pass run_id")
        by_run.setdefault(target, []).extend(record.to_mlflow())
    client = MlflowClient(tracking_uri)
    for target, metrics in by_run.items():
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            batch = metrics[start : start + MAX_METRICS_PER_BATCH]
            client.log_batch(target, metrics=batch, synchronous=True)
    end_run = run_id or (end.run_id if end else None)
    if end is not None and end_run is not None and client.get_run(end_run).info.status == "RUNNING":
        client.set_terminated(end_run, status=end.status, end_time=end.timestamp)
    return sum(len(metrics) for metrics in by_run.values())
