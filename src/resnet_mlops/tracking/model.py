"""Logging a trained PyTorch model to an MLflow run, with a signature and an input example."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, infer_signature
from torch import nn

from resnet_mlops.tracking.connection import global_tracking_uri


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside (Distributed)DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _prepared(
    model: nn.Module, input_example: np.ndarray, kwargs: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """A CPU copy in eval mode, and the arguments with the signature and requirements."""
    cpu_model = copy.deepcopy(unwrap(model)).cpu().eval()
    with torch.no_grad():
        output = cpu_model(torch.from_numpy(input_example))
    kwargs = {"signature": infer_signature(input_example, output.numpy()), **kwargs}
    if not {"pip_requirements", "extra_pip_requirements", "conda_env"} & kwargs.keys():
        # MLflow would otherwise load the model in a subprocess to guess its requirements
        # (seconds, and it lists every package the process had imported); an exported
        # program needs torch.
        kwargs["pip_requirements"] = mlflow.pytorch.get_default_pip_requirements()
    return cpu_model, {"input_example": input_example, **kwargs}


def log_pytorch_model(
    model: nn.Module,
    input_example: np.ndarray,
    *,
    tracking_uri: str,
    run_id: str,
    name: str = "model",
    **kwargs: Any,
) -> str:
    """Log a CPU copy of ``model`` in eval mode with ``mlflow.pytorch.log_model``.

    The signature is inferred from the example and the model's output on it. MLflow 3 saves
    the model with ``torch.export`` by default, so loading it needs no project code; the
    batch dimension is dynamic only if the example holds 2 or more inputs. The copy is on the
    CPU so that the model loads on machines without the training GPU, and in eval mode so that
    batch norm uses its running statistics.

    Args:
        model: The trained network (wrappers are removed).
        input_example: A small float32 batch, as the model expects it.
        tracking_uri: The tracking server or store.
        run_id: The run the model belongs to.
        name: The logged model's name.
        **kwargs: Passed on to ``mlflow.pytorch.log_model``.

    Returns:
        The model URI, ``models:/<model id>``.

    Raises:
        MlflowException: the server could not be reached or rejected the model.
    """
    cpu_model, kwargs = _prepared(model, input_example, kwargs)
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    # MLflow 3 files a logged model under the *active* experiment, not the run's: without
    # this the model lands in "Default", away from its run.
    with global_tracking_uri(tracking_uri), _env("MLFLOW_EXPERIMENT_ID", experiment_id):
        info = mlflow.pytorch.log_model(cpu_model, name=name, run_id=run_id, **kwargs)
    return info.model_uri


def save_pytorch_model(model: nn.Module, input_example: np.ndarray, path: Path) -> None:
    """Save the model as :func:`log_pytorch_model` would log it, to a new local folder
    (``mlflow.pytorch.save_model``), for :func:`log_saved_model` to log later."""
    cpu_model, kwargs = _prepared(model, input_example, {})
    mlflow.pytorch.save_model(cpu_model, str(path), **kwargs)


def log_saved_model(
    path: Path, *, tracking_uri: str, run_id: str, name: str = "model", **kwargs: Any
) -> str:
    """Log a model saved by :func:`save_pytorch_model` to a run; returns its URI.

    MLflow has no call that logs a saved folder as a run's model, so the saved program is
    loaded and logged again, with the input example saved beside it.
    """
    example = Model.load(str(path)).load_input_example(str(path))
    model = mlflow.pytorch.load_model(str(path))
    return log_pytorch_model(
        model, example, tracking_uri=tracking_uri, run_id=run_id, name=name, **kwargs
    )
