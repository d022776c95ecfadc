"""``resnet import-run``: training runs made without MLflow (on a lent GPU machine, say) as
MLflow runs. A stage-level module: it combines the model file, the curves and the tracker.

A run folder holds what ``train()`` writes: ``history.json`` (one record per epoch) and
``model.pt``. Each becomes a FINISHED run with the same params, tags, metrics, curves and
logged model as a ``resnet train`` run; optionally grouped under a grid's parent run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.engine.checkpoint import CheckpointError
from resnet_mlops.errors import DataError
from resnet_mlops.tracking.runs import experiment_id
from resnet_mlops.tracking.tracker import RunTracker
from resnet_mlops.train.curves import plot_training_curves

IMPORTED_TAG = "imported_from"


def _read_run(run_dir: Path) -> tuple[Path, list[dict[str, float]], dict[str, Any], str]:
    """The folder, its history, model metadata and experiment, checked before sending."""
    path = Path(run_dir) / "history.json"
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (not a finished training run folder)") from None
    except ValueError as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    if (
        not isinstance(history, list)
        or not history
        or not all(isinstance(record, dict) and "epoch" in record for record in history)
    ):
        raise DataError(f"{path}: expected a non-empty list of per-epoch records")
    if not (path.parent / "model.pt").exists() and (path.parent / "checkpoint.pt").exists():
        raise CheckpointError(
            f"{path.parent}: the run did not finish (a checkpoint, no model.pt); resume it first"
        )
    _, meta = load_model(path.parent / "model.pt")
    config = meta.get("config") or {}
    meta["dataset"] = config.get("dataset", meta["preprocessing"].get("dataset", "?"))
    experiment = config.get("train", {}).get("experiment", f"resnet-{meta['dataset']}")
    return path.parent, history, meta, experiment


def _log_run(run: tuple, tracking_uri: str, grid: str | None, parent_run_id: str | None) -> str:
    folder, history, meta, experiment = run
    provenance = meta.get("provenance") or {}
    skip = ("data_version", "mlflow_run_id")
    tags = {k: str(v) for k, v in provenance.items() if v is not None and k not in skip}
    name, dataset = meta["model"], meta["dataset"]
    tags.update({"model": name, "dataset": dataset, IMPORTED_TAG: str(folder)})
    tags.update({"grid": grid} if grid else {})
    tags.update({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "mlflow-history.jsonl"
        with RunTracker(
            experiment=experiment,
            tracking_uri=tracking_uri,
            run_name=name,
            required=True,
            history_path=journal,
            system_metrics=False,
        ) as tracker:
            config = meta.get("config") or {}
            run_id = tracker.start(config, tags, data_version=provenance.get("data_version"))
            for record in history:
                tracker.log_metrics(record, step=int(record["epoch"]))
            curves = Path(tmp) / "training_curves.png"
            plot_training_curves(history, curves, f"{name} on {dataset}")
            tracker.log_artifact(curves, "plots")
            tracker.log_artifact(folder / "history.json", "plots")
            tracker.log_model(folder / "model.pt")
    assert run_id is not None  # required=True: start() raised otherwise
    return run_id


def import_run(
    run_dir: Path, *, tracking_uri: str, grid: str | None = None, parent_run_id: str | None = None
) -> str:
    """Log ``run_dir`` as a finished MLflow run; returns its run id.

    Raises:
        DataError: ``history.json`` is missing or malformed.
        CheckpointError: ``model.pt`` is missing or not a model file (an unfinished run has
            only ``checkpoint.pt``: resume it with ``resnet train --resume`` first).
        TrackingError: the tracking server cannot be reached.
    """
    return _log_run(_read_run(run_dir), tracking_uri, grid, parent_run_id)


def import_grid(run_dirs: list[Path], *, tracking_uri: str, grid: str) -> list[str]:
    """Import ``run_dirs`` as child runs of the newest live parent run ``grid <grid>`` of the
    experiment (a run finished in a later lease joins those imported before), else of a new
    one. Every folder is checked first: a bad one stops the import before anything is sent.
    Raises as :func:`import_run`."""
    runs = [_read_run(run_dir) for run_dir in run_dirs]
    if not runs:
        return []
    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, runs[0][3], tracking_uri)
    query = f"tags.grid = '{grid}' and tags.`mlflow.runName` = 'grid {grid}'"
    order = ["attributes.start_time DESC"]
    parents = client.search_runs([experiment], query, order_by=order, max_results=1)
    if parents:
        return [_log_run(run, tracking_uri, grid, parents[0].info.run_id) for run in runs]
    parent = client.create_run(experiment, run_name=f"grid {grid}", tags={"grid": grid}).info.run_id
    try:
        ids = [_log_run(run, tracking_uri, grid, parent) for run in runs]
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent)
    return ids


__all__ = ["IMPORTED_TAG", "CheckpointError", "import_grid", "import_run"]
