"""``resnet sync``: a run's journal (:mod:`resnet_mlops.journal`) and its pending files sent to
MLflow, creating the run if the server never saw it; idempotent."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from resnet_mlops.io import atomic_write_bytes
from resnet_mlops.journal import (
    PENDING_DIR,
    MetricRecord,
    RunEnd,
    RunStart,
    Upload,
    read_journal,
    uploads,
)
from resnet_mlops.tracking.runs import log_classifier, log_params_and_tags, open_run


def send_upload(uri: str, run_id: str, upload: Upload, folder: Path) -> str | None:
    """Log ``folder`` to the run, then remove it; as the classifier if ``upload.model`` (its
    ``models:/`` URI is returned), else as artifacts (None)."""
    sent = None
    if upload.model is not None:
        sent = log_classifier(folder, uri, run_id, **upload.options)
    else:
        MlflowClient(uri).log_artifacts(run_id, str(folder))
    shutil.rmtree(folder)  # only now: a kill before this leaves the folder for the next sync
    return sent


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
    uploads(history_file, records)
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
    sent = [(u, folder) for u, folder in uploads(history_file, records) if folder.is_dir()]
    for upload, folder in sent:  # a folder gone was sent already
        send_upload(uri, run_id or upload.run_id, upload, folder)  # type: ignore[arg-type]
    with contextlib.suppress(OSError):  # the last one out
        (history_file.parent / PENDING_DIR).rmdir()
    end = next((r for r in reversed(records) if isinstance(r, RunEnd)), None)
    end_run = end and (run_id or end.run_id)
    if end and end_run and client.get_run(end_run).info.status == "RUNNING":
        client.set_terminated(end_run, status=end.status, end_time=end.timestamp)
    run_ids = tuple(sorted({run_id or r.run_id for r in records}))  # type: ignore[type-var]
    models = sum(upload.model is not None for upload, _ in sent)
    return Replayed(run_ids, sum(map(len, metrics.values())), len(sent) - models, models)
