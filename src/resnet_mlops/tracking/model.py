"""Logging a trained PyTorch model to an MLflow run, with a signature and an input example."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, infer_signature
from torch import nn

from resnet_mlops.engine.artifact import portable_copy
from resnet_mlops.tracking.connection import global_tracking_uri


def _prepared(
    model: nn.Module, input_example: np.ndarray, kwargs: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """A portable copy (CPU: loads without the training GPU; eval: batch norm uses its running
    statistics; contiguous weights: see :func:`portable_copy`), and the arguments with the
    signature, example and requirements."""
    cpu_model = portable_copy(model)
    with torch.no_grad():
        output = cpu_model(torch.from_numpy(input_example))
    kwargs = {"signature": infer_signature(input_example, output.numpy()), **kwargs}
    if not {"pip_requirements", "extra_pip_requirements", "conda_env"} & kwargs.keys():
        # Else MLflow loads the model in a subprocess to guess them (seconds, and every package
        # the process imported); an exported program needs torch.
        kwargs["pip_requirements"] = mlflow.pytorch.get_default_pip_requirements()
    return cpu_model, {"input_example": input_example, **kwargs}


def log_pytorch_model(
    model: nn.Module,
    input_example: np.ndarray,
    tracking_uri: str,
    run_id: str,
    name: str = "model",
    **kwargs: Any,
) -> str:
    """Log a CPU copy of ``model`` in eval mode with ``mlflow.pytorch.log_model``; returns its
    URI (``models:/<model id>``).

    MLflow 3 saves it with ``torch.export``, so loading needs no project code; the batch
    dimension is dynamic only if ``input_example`` holds 2 or more inputs. ``kwargs`` go to
    ``log_model``.
    """
    experiment = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    cpu_model, kwargs = _prepared(model, input_example, kwargs)
    # MLflow 3 files a logged model under the *active* experiment, not the run's.
    previous = os.environ.get("MLFLOW_EXPERIMENT_ID")
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment
    try:
        with global_tracking_uri(tracking_uri):
            return mlflow.pytorch.log_model(cpu_model, name=name, run_id=run_id, **kwargs).model_uri
    finally:
        os.environ.pop("MLFLOW_EXPERIMENT_ID")
        if previous is not None:
            os.environ["MLFLOW_EXPERIMENT_ID"] = previous


def save_pytorch_model(model: nn.Module, input_example: np.ndarray, path: Path) -> None:
    """Save the model as :func:`log_pytorch_model` logs it, to a new folder, for later."""
    cpu_model, kwargs = _prepared(model, input_example, {})
    mlflow.pytorch.save_model(cpu_model, str(path), **kwargs)


def log_saved_model(
    path: Path, tracking_uri: str, run_id: str, name: str = "model", **kwargs: Any
) -> str:
    """Log a model saved by :func:`save_pytorch_model` (MLflow cannot log a saved folder as a
    run's model, so it is loaded and logged again)."""
    example = Model.load(str(path)).load_input_example(str(path))
    model = mlflow.pytorch.load_model(str(path))
    return log_pytorch_model(model, example, tracking_uri, run_id, name, **kwargs)
