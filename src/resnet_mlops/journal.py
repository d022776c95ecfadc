"""The local journal of a tracked run: one JSON line per event, appended as it happens, so that
nothing the MLflow server misses is lost; ``resnet sync`` (:mod:`resnet_mlops.tracking.sync`)
sends it later.

MLflow's own asynchronous logging (``log_batch(synchronous=False)``, MLflow 3) drops a batch
that fails: it logs an error and never retries (tests/integration/test_tracking_sync.py pins
this to the installed version). So every event is also appended here, one JSON line each;
files wait in ``mlflow-pending/`` beside the journal until the server has them::

    {"run_id": null, "experiment": "e", "run_name": "resnet20", "params": {...}, "tags": {...}}
    {"run_id": "3f2a...", "step": 100, "timestamp": 1718000000000, "metrics": {"loss": 2.1}}
    {"run_id": "3f2a...", "folder": "mlflow-pending/9c1d...", "model": null, "options": {}}
    {"run_id": "3f2a...", "timestamp": 1718000900000, "status": "FINISHED"}

A run-start line is written only when the server could not open the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

log = logging.getLogger(__name__)

PENDING_DIR = "mlflow-pending"  # beside the journal: files kept until they reach the server


@dataclasses.dataclass(frozen=True)
class MetricRecord:
    """The metrics of one step; the timestamp makes a resend idempotent (the SQL store keys a
    value on key, value, timestamp and step)."""

    step: int
    timestamp: int
    metrics: Mapping[str, float]
    run_id: str | None = None

    def to_mlflow(self) -> list[Metric]:
        return [Metric(k, v, self.timestamp, self.step) for k, v in self.metrics.items()]


@dataclasses.dataclass(frozen=True)
class RunEnd:
    status: str
    timestamp: int
    run_id: str | None = None


@dataclasses.dataclass(frozen=True)
class RunStart:
    """A run the server could not open: what :func:`replay_history` creates it with."""

    experiment: str
    run_name: str | None
    params: Mapping[str, Any]
    tags: Mapping[str, str]
    run_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Upload:
    """A folder (relative to the journal) mirroring the run's artifact tree, or with ``model``
    set the classifier's files (``options``: its ``metadata``)."""

    folder: str
    model: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None


Record = MetricRecord | RunEnd | RunStart | Upload
_KINDS = {"metrics": MetricRecord, "status": RunEnd, "params": RunStart, "folder": Upload}


def append(path: Path, record: Record) -> None:
    """Append one record in one ``write`` (no fsync: a crash of the process, not of the
    machine, is the case guarded against).

    Raises:
        OSError: the disk refused it (full, quota), naming the journal, which then ends where
            it ended before, not in a cut line a later append would bury in the middle.
    """
    data = memoryview((json.dumps(dataclasses.asdict(record), default=str) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        end = os.fstat(fd).st_size
        while data:
            data = data[os.write(fd, data) :]
    except OSError as error:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise OSError(error.errno, error.strerror, str(path)) from error  # os.write names none
    finally:
        os.close(fd)


def read_journal(path: Path) -> list[Record]:
    """Every record, in order; a cut last line (a kill mid-write) is skipped with a warning,
    another bad line is a ValueError naming it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        try:
            data = json.loads(line) if line.strip() else None
            kind = next((c for key, c in _KINDS.items() if key in data), None) if data else None
            if data is not None:
                records.append(kind(**data))  # type: ignore[misc]
        except (ValueError, TypeError) as error:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a journal record ({error})") from None
            log.warning("%s:%d: skipping an incomplete last line", path, number)
    return records


def read_history(path: Path) -> tuple[list[MetricRecord], RunEnd | None]:
    """The metric records of a journal, and the last run end it recorded."""
    records = read_journal(path)
    ends = [r for r in records if isinstance(r, RunEnd)]
    return [r for r in records if isinstance(r, MetricRecord)], ends[-1] if ends else None


def holds_unsent(path: Path) -> bool:
    """Whether a journal names a run never created or files never sent (unreadable counts)."""
    try:
        records = read_journal(path)
        folders = [folder for _, folder in uploads(path, records)]
    except (OSError, ValueError):
        return True
    return any(isinstance(r, RunStart) and r.run_id is None for r in records) or any(
        folder.exists() for folder in folders
    )


def uploads(path: Path, records: list[Record]) -> list[tuple[Upload, Path]]:
    """The journal's uploads and their folders; ValueError for one outside ``mlflow-pending/``
    (sync removes what it sent: only ever one of ours)."""
    found = [(r, path.parent / r.folder) for r in records if isinstance(r, Upload)]
    pending = (path.parent / PENDING_DIR).resolve()
    for record, folder in found:
        if folder.is_symlink() or folder.resolve().parent != pending:
            raise ValueError(f"{path}: {record.folder!r} is not in {PENDING_DIR}/")
    return found
