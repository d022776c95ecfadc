"""The run's one logged model: the pyfunc classifier of :mod:`resnet_mlops.serving`."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.models import Model

from resnet_mlops.serving.package import (
    ARTIFACT_NAME,
    MODEL_SHA256_TAG,
    ModelFiles,
    pyfunc_arguments,
)
from resnet_mlops.tracking.connection import global_tracking_uri


def logged_classifier(client: MlflowClient, run_id: str, sha256: str) -> str | None:
    """``models:/<id>`` of the run's classifier holding the ``model.pt`` with ``sha256``, if
    it logged one completely."""
    experiment = client.get_run(run_id).info.experiment_id
    query = f"source_run_id = '{run_id}' AND tags.`{MODEL_SHA256_TAG}` = '{sha256}'"
    found = client.search_logged_models([experiment], query)
    return next((m.model_uri for m in found if m.status == LoggedModelStatus.READY), None)


def log_classifier(folder: Path, tracking_uri: str, run_id: str, metadata: dict[str, str]) -> str:
    """Log the files in ``folder`` (:class:`~resnet_mlops.serving.package.ModelFiles`) as the
    run's classifier, unless it has it already; returns its ``models:/<id>``.

    ``metadata`` is :func:`~resnet_mlops.serving.package.model_summary`. The logged model is
    created here, in the run's experiment: ``Model.log`` would file it under the active one.
    """
    client = MlflowClient(tracking_uri)
    sha256 = metadata[MODEL_SHA256_TAG]
    if (uri := logged_classifier(client, run_id, sha256)) is not None:
        return uri
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment, ARTIFACT_NAME, run_id, {MODEL_SHA256_TAG: sha256}
    )
    arguments = pyfunc_arguments(ModelFiles.read(folder), {"resnet_mlops": metadata})
    with global_tracking_uri(tracking_uri):  # Model.log has no URI argument
        info = Model.log(
            None, name=ARTIFACT_NAME, run_id=run_id, model_id=model.model_id, **arguments
        )
    return info.model_uri
