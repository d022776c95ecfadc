"""The local journal of a run, and ``resnet sync`` (:func:`replay_history`), which sends it.

MLflow's own asynchronous logging (``log_batch(synchronous=False)``, MLflow 3) drops a batch
that fails: it logs an error and never retries (tests/integration/test_tracking_sync.py pins
this to the installed version). So every event is also appended here, one JSON line each;
files the server did not take wait in ``mlflow-pending/`` beside the journal::

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
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from resnet_mlops.io import atomic_write_bytes
from resnet_mlops.tracking.runs import log_classifier, log_params_and_tags, open_run

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
        """One MLflow :class:`~mlflow.entities.Metric` per value."""
        return [Metric(k, v, self.timestamp, self.step) for k, v in self.metrics.items()]


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """How the run ended."""

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
    """A folder of ``mlflow-pending/`` (relative to the journal) mirroring the run's artifact
    tree, or with ``model`` set the classifier's files (``options``: its ``metadata``)."""

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
    except (OSError, ValueError):
        return True
    return any(
        (isinstance(r, RunStart) and r.run_id is None)
        or (isinstance(r, Upload) and (path.parent / r.folder).exists())
        for r in records
    )


def _uploads(path: Path, records: list[Record]) -> list[tuple[Upload, Path]]:
    """The journal's uploads and their folders; ValueError for one outside ``mlflow-pending/``
    (sync removes what it sent: only ever one of ours)."""
    found = [(r, path.parent / r.folder) for r in records if isinstance(r, Upload)]
    pending = (path.parent / PENDING_DIR).resolve()
    for record, folder in found:
        if folder.is_symlink() or folder.resolve().parent != pending:
            raise ValueError(f"{path}: {record.folder!r} is not in {PENDING_DIR}/")
    return found


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What :func:`replay_history` sent."""

    run_ids: tuple[str, ...]
    metrics: int
    uploads: int
    models: int


def replay_history(
    history_file: Path, run_id: str | None = None, *, tracking_uri: str | None = None
) -> Replayed:
    """Send a journal to MLflow (to ``run_id``, else each record's run); safe to repeat.

    Creates the run if the server never saw it (writing its id into the journal, so a second
    replay reuses it), then logs params, tags, metric values with their original timestamps,
    the pending folders (each removed once sent) and the run's end.

    Raises:
        ValueError: a bad line, a folder outside ``mlflow-pending/``, or records without a
            run id, no run start and no ``run_id``.
        MlflowException: the server could not be reached or refused a request.
    """
    records = read_journal(history_file)  # before a client: it may create a store
    _uploads(history_file, records)
    start = next((r for r in records if isinstance(r, RunStart) and r.run_id is None), None)
    if run_id is None and start is None and any(r.run_id is None for r in records):
        raise ValueError(f"{history_file}: records without a run id; pass a run id")
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    if run_id is None and start is not None:
        created = open_run(client, start.experiment, uri, None, start.run_name, start.tags)
        lines = [line for line in history_file.read_text().splitlines() if line.strip()]
        lines = [json.loads(line) for line in lines[: len(records)]]  # not a cut last line
        text = "".join(json.dumps({**d, "run_id": d["run_id"] or created}) + "\n" for d in lines)
        atomic_write_bytes(history_file, text.encode())
        records = read_journal(history_file)
    metrics: dict[str, list[Metric]] = {}
    for r in records:
        if isinstance(r, RunStart):
            log_params_and_tags(client, run_id or r.run_id, r.params, r.tags)  # type: ignore[arg-type]
        elif isinstance(r, MetricRecord):
            metrics.setdefault(run_id or r.run_id, []).extend(r.to_mlflow())  # type: ignore[arg-type]
    for run, values in metrics.items():
        client.log_batch(run, metrics=values)
    uploads = models = 0
    for upload, folder in _uploads(history_file, records):
        if not folder.is_dir():
            continue  # sent already: a folder is removed only after it reached the server
        if upload.model is not None:
            log_classifier(folder, uri, run_id or upload.run_id, **upload.options)  # type: ignore[arg-type]
            models += 1
        else:
            client.log_artifacts(run_id or upload.run_id, str(folder))  # type: ignore[arg-type]
            uploads += 1
        shutil.rmtree(folder)
    pending = history_file.parent / PENDING_DIR
    if pending.is_dir() and not any(pending.iterdir()):
        pending.rmdir()
    end = next((r for r in reversed(records) if isinstance(r, RunEnd)), None)
    end_run = end and (run_id or end.run_id)
    if end and end_run and client.get_run(end_run).info.status == "RUNNING":
        client.set_terminated(end_run, status=end.status, end_time=end.timestamp)
    run_ids = tuple(sorted({run_id or r.run_id for r in records}))  # type: ignore[type-var]
    return Replayed(run_ids, sum(map(len, metrics.values())), uploads, models)
