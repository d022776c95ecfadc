"""Logging a trained PyTorch model to an MLflow run, with a signature and an input example."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import infer_signature
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
    cpu_model = copy.deepcopy(unwrap(model)).cpu().eval()
    with torch.no_grad():
        output = cpu_model(torch.from_numpy(input_example))
    signature = infer_signature(input_example, output.numpy())
    if not {"pip_requirements", "extra_pip_requirements", "conda_env"} & kwargs.keys():
        # MLflow would otherwise load the model in a subprocess to guess its requirements
        # (seconds, and it lists every package the process had imported); an exported
        # program needs torch.
        kwargs["pip_requirements"] = mlflow.pytorch.get_default_pip_requirements()
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    # MLflow 3 files a logged model under the *active* experiment, not the run's: without
    # this the model lands in "Default", away from its run.
    with global_tracking_uri(tracking_uri), _env("MLFLOW_EXPERIMENT_ID", experiment_id):
        info = mlflow.pytorch.log_model(
            cpu_model,
            name=name,
            signature=signature,
            input_example=input_example,
            run_id=run_id,
            **kwargs,
        )
    return info.model_uri
