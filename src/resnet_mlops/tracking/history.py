"""The local journal of a run: metrics, and what the server is still missing.

One line per event, appended and flushed as it happens, so a crash or a server that never
comes back loses nothing. A journal, not a finished output: the last line of a killed process
may be cut short, and :func:`read_journal` skips it.

    {"run_id": null, "experiment": "e", "run_name": "resnet20", "params": {...}, "tags": {...}}
    {"run_id": "3f2a...", "step": 100, "timestamp": 1718000000000, "metrics": {"train_loss": 2.1}}
    {"run_id": "3f2a...", "folder": "mlflow-pending/9c1d...", "model": null, "options": {}}
    {"run_id": "3f2a...", "timestamp": 1718000900000, "status": "FINISHED"}

A run-start line is written only when the run could not be opened on the server; an upload
line names a folder beside the journal that holds files until they reach the server.
:func:`replay_history` (``resnet sync``) sends all of it.
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

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from resnet_mlops.data.io import atomic_write_bytes
from resnet_mlops.tracking.runs import log_params_and_tags, open_run

log = logging.getLogger(__name__)

PENDING_DIR = "mlflow-pending"  # beside the journal: files kept until they reach the server


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
    """Files kept beside the journal until they reach the server.

    Attributes:
        folder: The folder, relative to the journal's; it is removed once sent. Its contents
            mirror the run's artifact tree, or, with ``model`` set, it is a model saved with
            ``mlflow.pytorch.save_model``.
        model: The logged model's name when ``folder`` is a saved model.
        options: Further arguments of ``mlflow.pytorch.log_model`` for the model.
        run_id: The run the files belong to; None when no run could be opened.
    """

    folder: str
    model: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None


Record = MetricRecord | RunEnd | RunStart | Upload
# The key that tells a journal line's kind.
_KINDS: dict[str, type[Record]] = {
    "metrics": MetricRecord,
    "status": RunEnd,
    "params": RunStart,
    "folder": Upload,
}


class HistoryJournal:
    """Appends records to a journal file, each line whole or not at all."""

    def __init__(self, path: Path, *, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # O_APPEND: a line cut by a full disk is truncated away, and the next one lands at
        # the new end instead of after a hole.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd: int | None = os.open(path, flags | (0 if append else os.O_TRUNC), 0o644)

    def write(self, record: Record) -> None:
        """Append one record in one ``write`` (not fsync: a crash of the process, not of the
        machine, is the case this guards against).

        Raises:
            OSError: the disk refused it (full, quota), naming the journal; the journal then
                ends where it ended before, not in a cut line that a later append would bury
                in the middle.
        """
        assert self._fd is not None, "journal closed"
        data = memoryview((json.dumps(dataclasses.asdict(record), default=str) + "\n").encode())
        end = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
            # os.write's error names no file: name the journal for the one-line error.
            raise OSError(error.errno, error.strerror, str(self.path)) from error

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(line: str) -> Record:
    data = json.loads(line)
    kind = next((cls for key, cls in _KINDS.items() if key in data), None)
    if kind is None:
        raise ValueError("no 'metrics', 'status', 'params' or 'folder' key")
    return kind(**data)


def read_journal(path: Path) -> list[Record]:
    """Every record of a journal, in order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a record (the message names the line).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_parse(line))
        except (ValueError, TypeError) as error:
            if number == len(lines):  # Cut short by a kill mid-write.
                log.warning("%s:%d: skipping an incomplete last line", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a journal record ({error})") from None
    return records


def read_history(path: Path) -> tuple[list[MetricRecord], RunEnd | None]:
    """The metric records of a journal, and the last run end it recorded.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a record (the message names the line).
    """
    records = read_journal(path)
    ends = [record for record in records if isinstance(record, RunEnd)]
    return [r for r in records if isinstance(r, MetricRecord)], ends[-1] if ends else None


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What :func:`replay_history` sent."""

    run_ids: tuple[str, ...]
    metrics: int
    uploads: int
    models: int


def _name_new_run(path: Path, run_id: str) -> None:
    """Write the id of the run just created into the journal's id-less lines, so that a
    second replay sends to that run instead of creating another."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue  # the cut last line read_journal skipped
        if data.get("run_id") is None:
            data["run_id"] = run_id
        lines.append(json.dumps(data) + "\n")
    atomic_write_bytes(path, "".join(lines).encode())


def replay_history(
    history_file: Path, run_id: str | None = None, *, tracking_uri: str | None = None
) -> Replayed:
    """Send what a journal holds to MLflow, e.g. after the server was down.

    Creates the run if the server was down at its start (and writes its id into the
    journal), logs its params and tags, every metric value, the files kept beside the
    journal (each folder is removed once sent) and the run's end. Safe to repeat, and safe
    for values that did reach the server: records keep their original timestamps, the SQL
    store keeps one copy of identical values, and an artifact sent again replaces itself.
    Run it once the training has ended: it rewrites the journal when it creates the run.

    Args:
        history_file: A journal written by :class:`RunTracker`.
        run_id: The run to log to; None sends each record to the run it was recorded for.
        tracking_uri: None uses MLflow's own resolution (``MLFLOW_TRACKING_URI``).

    Returns:
        The runs sent to and the counts of metric values, artifact folders and models sent.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line of the journal is not a record, or records have no run id, no
            run start says how to create their run, and ``run_id`` was not given.
        MlflowException: the server could not be reached or refused a request.
    """
    import mlflow

    from resnet_mlops.tracking.model import log_saved_model

    records = read_journal(history_file)  # before a client: it may create a store
    pending = (history_file.parent / PENDING_DIR).resolve()
    for record in records:  # A folder is removed once sent: only ever one of ours.
        if isinstance(record, Upload):
            folder = history_file.parent / record.folder
            if folder.is_symlink() or folder.resolve().parent != pending:
                raise ValueError(f"{history_file}: {record.folder!r} is not in {PENDING_DIR}/")
    start = next((r for r in records if isinstance(r, RunStart) and r.run_id is None), None)
    unnamed = run_id is None and any(r.run_id is None for r in records)
    if unnamed and start is None:
        raise ValueError(f"{history_file}: records without a run id; pass a run id")
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(uri)
    created: str | None = None
    if unnamed:
        assert start is not None
        created, _, _ = open_run(
            client,
            experiment=start.experiment,
            tracking_uri=uri,
            run_id=None,
            run_name=start.run_name,
            tags=start.tags,
        )
        _name_new_run(history_file, created)

    def target(record: Record) -> str:
        return run_id or record.run_id or created  # type: ignore[return-value]

    metrics: dict[str, list[Metric]] = {}
    for record in records:
        if isinstance(record, RunStart):
            run = client.get_run(target(record)).data
            log_params_and_tags(
                client, target(record), record.params, record.tags, existing=(run.params, run.tags)
            )
        elif isinstance(record, MetricRecord):
            metrics.setdefault(target(record), []).extend(record.to_mlflow())
    for target_id, values in metrics.items():
        for first in range(0, len(values), MAX_METRICS_PER_BATCH):
            batch = values[first : first + MAX_METRICS_PER_BATCH]
            client.log_batch(target_id, metrics=batch, synchronous=True)
    uploads = models = 0
    for record in records:
        folder = history_file.parent / record.folder if isinstance(record, Upload) else None
        if folder is None or not folder.is_dir():
            continue  # sent already: a folder is removed only after it reached the server
        if record.model is not None:
            log_saved_model(
                folder, tracking_uri=uri, run_id=target(record), name=record.model, **record.options
            )
            models += 1
        else:
            client.log_artifacts(target(record), str(folder))
            uploads += 1
        shutil.rmtree(folder)
        with contextlib.suppress(OSError):  # mlflow-pending/, once empty
            folder.parent.rmdir()
    ends = [record for record in records if isinstance(record, RunEnd)]
    if ends and client.get_run(target(ends[-1])).info.status == "RUNNING":
        client.set_terminated(target(ends[-1]), status=ends[-1].status, end_time=ends[-1].timestamp)
    run_ids = {target(record) for record in records if target(record)}
    return Replayed(tuple(sorted(run_ids)), sum(map(len, metrics.values())), uploads, models)
