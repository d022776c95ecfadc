"""Opening an MLflow run, or re-opening one to resume, with its params and tags, and its one
logged model: the pyfunc classifier of :mod:`resnet_mlops.serving`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, LoggedModelStatus, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from resnet_mlops.errors import UserError
from resnet_mlops.mlflow_store import global_tracking_uri, local_artifact_location
from resnet_mlops.params.base import flatten
from resnet_mlops.serving.package import (
    ARTIFACT_NAME,
    MODEL_SHA256_TAG,
    ModelFiles,
    pyfunc_arguments,
)

log = logging.getLogger(__name__)

TRUNCATED = "...[truncated, see params.json]"
# MLflow 3 opens an experiment on its GenAI overview unless this tag says it holds model
# training runs (the UI reads the tag; "custom_model_development" shows the runs table).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}


class TrackingError(UserError, RuntimeError):
    """Tracking was required (``required=True``) and could not be set up; the message says why."""


def param_value(value: Any) -> str:
    """A param as MLflow stores it: text of at most 6000 characters (longer ones are cut)."""
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
    return text


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if missing (as a model-training experiment:
    :data:`EXPERIMENT_TAGS`); TrackingError if it is deleted."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = local_artifact_location(tracking_uri, name)
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException as error:  # Another process created it just now.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or choose another name"
        )
    return experiment.experiment_id


def open_run(
    client: MlflowClient,
    experiment: str,
    uri: str,
    run_id: str | None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Re-open run ``run_id`` (RUNNING again; TrackingError if deleted), or create one named
    ``run_name`` with ``tags`` (and ``mlflow.start_run``'s context tags) when it is None or
    unknown; returns the run id."""
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("MLflow run %s not found in %s; starting a new run", run_id, uri)
        else:
            if run.info.lifecycle_stage != LifecycleStage.ACTIVE:
                raise TrackingError(f"MLflow run {run_id} is deleted")
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            return run_id
    tags = resolve_tags(tags or {})
    run = client.create_run(experiment_id(client, experiment, uri), run_name=run_name, tags=tags)
    return run.info.run_id


def log_params_and_tags(
    client: MlflowClient, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> None:
    """Log the flattened params and the tags the run does not have yet (MLflow params cannot
    change: a resumed run keeps its values, and a warning names those that differ)."""
    data = client.get_run(run_id).data
    new_params = {key: param_value(value) for key, value in flatten(params).items()}
    new_tags = {key: str(value) for key, value in tags.items()}
    changed = [
        f"{key}: {old[key]!r} -> {value!r}"
        for old, new in ((data.params, new_params), (data.tags, new_tags))
        for key, value in new.items()
        if key in old and old[key] != value
    ]
    if changed:
        log.warning("run %s keeps its values of %s", run_id, "; ".join(changed))
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in new_params.items() if k not in data.params],
        tags=[RunTag(k, v) for k, v in new_tags.items() if k not in data.tags],
    )


def logged_classifier(client: MlflowClient, run_id: str, sha256: str) -> str | None:
    """``models:/<id>`` of the run's classifier holding the ``model.pt`` with ``sha256``, if
    it logged one completely."""
    experiment = client.get_run(run_id).info.experiment_id
    query = f"source_run_id = '{run_id}' AND tags.`{MODEL_SHA256_TAG}` = '{sha256}'"
    found = client.search_logged_models([experiment], query)
    return next((m.model_uri for m in found if m.status == LoggedModelStatus.READY), None)


def log_classifier(folder: Path, tracking_uri: str, run_id: str, metadata: dict[str, str]) -> str:
    """Log the :class:`~resnet_mlops.serving.package.ModelFiles` in ``folder`` with ``metadata``
    (``model_summary``) as the run's classifier unless it has it; returns ``models:/<id>``.
    Created here, in the run's experiment: ``Model.log`` would file it under the active one."""
    client = MlflowClient(tracking_uri)
    sha256 = metadata[MODEL_SHA256_TAG]
    if (uri := logged_classifier(client, run_id, sha256)) is not None:
        return uri
    experiment, tags = client.get_run(run_id).info.experiment_id, {MODEL_SHA256_TAG: sha256}
    model_id = client.create_logged_model(experiment, ARTIFACT_NAME, run_id, tags).model_id
    arguments = pyfunc_arguments(ModelFiles.read(folder), {"resnet_mlops": metadata})
    with global_tracking_uri(tracking_uri):  # Model.log has no URI argument
        info = Model.log(None, name=ARTIFACT_NAME, run_id=run_id, model_id=model_id, **arguments)
    return info.model_uri
