"""Log training runs made without MLflow (on a lent GPU machine, say) as MLflow runs.

A run folder holds what ``train()`` writes: ``history.json`` (one record per epoch) and
``model.pt`` (the model with its config and provenance). Each becomes a FINISHED run with the
same params, tags, per-epoch metrics, curves and logged model as a ``resnet train`` run, so
``resnet report`` and the MLflow UI treat both alike. Optionally grouped under a grid's parent
run, as the studies are.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from torch import nn

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.engine.checkpoint import CheckpointError
from resnet_mlops.errors import DataError
from resnet_mlops.tracking.runs import experiment_id
from resnet_mlops.tracking.tracker import RunTracker
from resnet_mlops.train.curves import plot_training_curves

IMPORTED_TAG = "imported_from"


def _read_history(path: Path) -> list[dict[str, float]]:
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
    return history


@dataclasses.dataclass(frozen=True)
class _RunFolder:
    """A run folder, read and checked before anything is sent to MLflow."""

    path: Path
    history: list[dict[str, float]]
    model: nn.Module
    meta: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config") or {}

    @property
    def dataset(self) -> str:
        return self.config.get("dataset", self.meta["preprocessing"].get("dataset", "?"))

    @property
    def experiment(self) -> str:
        return self.config.get("train", {}).get("experiment", f"resnet-{self.dataset}")


def _read_run(run_dir: Path) -> _RunFolder:
    run_dir = Path(run_dir)
    history = _read_history(run_dir / "history.json")
    if not (run_dir / "model.pt").exists() and (run_dir / "checkpoint.pt").exists():
        raise CheckpointError(
            f"{run_dir}: the run did not finish (a checkpoint, no model.pt); resume it first"
        )
    model, meta = load_model(run_dir / "model.pt")
    return _RunFolder(run_dir, history, model, meta)


def _log_run(
    run: _RunFolder, tracking_uri: str, grid: str | None, parent_run_id: str | None
) -> str:
    provenance = run.meta.get("provenance") or {}
    tags = {
        key: str(value)
        for key, value in provenance.items()
        if value is not None and key not in ("data_version", "mlflow_run_id")
    }
    name = run.meta["model"]
    tags.update({"model": name, "dataset": run.dataset, IMPORTED_TAG: str(run.path)})
    if grid:
        tags["grid"] = grid
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with tempfile.TemporaryDirectory() as tmp:
        tracker = RunTracker(
            experiment=run.experiment,
            tracking_uri=tracking_uri,
            run_name=name,
            required=True,
            history_path=Path(tmp) / "mlflow-history.jsonl",
            system_metrics=False,
        )
        with tracker:
            run_id = tracker.start(run.config, tags, data_version=provenance.get("data_version"))
            for record in run.history:
                tracker.log_metrics(record, step=int(record["epoch"]))
            curves = Path(tmp) / "training_curves.png"
            plot_training_curves(run.history, curves, f"{name} on {run.dataset}")
            tracker.log_artifact(curves, "plots")
            tracker.log_artifact(run.path / "history.json", "plots")
            size = run.meta["preprocessing"].get("input_size", 32)
            example = np.random.default_rng(0).standard_normal((2, 3, size, size), np.float32)
            tracker.log_model(run.model, example)
    assert run_id is not None  # required=True: start() raised otherwise
    return run_id


def import_run(
    run_dir: Path,
    *,
    tracking_uri: str,
    grid: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Log ``run_dir`` as a finished MLflow run; returns its run id.

    Raises:
        DataError: ``history.json`` is missing or malformed.
        CheckpointError: ``model.pt`` is missing or not a model file (an unfinished run has
            only ``checkpoint.pt``: resume it with ``resnet train --resume`` first).
        TrackingError: the tracking server cannot be reached.
    """
    return _log_run(_read_run(run_dir), tracking_uri, grid, parent_run_id)


def _grid_parent(client: MlflowClient, experiment: str, grid: str) -> str | None:
    """The newest live parent run ``grid <grid>`` in ``experiment``, if there is one."""
    parents = client.search_runs(
        [experiment],
        f"tags.grid = '{grid}' and tags.`mlflow.runName` = 'grid {grid}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return parents[0].info.run_id if parents else None


def import_grid(run_dirs: list[Path], *, tracking_uri: str, grid: str) -> list[str]:
    """Import ``run_dirs`` as child runs of the parent run ``grid <grid>``.

    The runs join the grid's parent where the experiment has one (a run that finished in a
    later lease joins the runs imported before it), else a new parent. Every folder is read
    and checked first, so a bad one stops the import before MLflow has a new parent or any
    child. Raises as :func:`import_run`.
    """
    runs = [_read_run(run_dir) for run_dir in run_dirs]
    if not runs:
        return []
    client = MlflowClient(tracking_uri)
    experiment = experiment_id(client, runs[0].experiment, tracking_uri)
    parent = _grid_parent(client, experiment, grid)
    if parent is not None:
        return [_log_run(run, tracking_uri, grid, parent) for run in runs]
    parent = client.create_run(experiment, run_name=f"grid {grid}", tags={"grid": grid}).info.run_id
    try:
        ids = [_log_run(run, tracking_uri, grid, parent) for run in runs]
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent)
    return ids


__all__ = ["IMPORTED_TAG", "CheckpointError", "import_grid", "import_run"]
