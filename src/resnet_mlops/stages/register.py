"""The ``register`` stage: the evaluated model into the MLflow Model Registry, champion gated."""

from __future__ import annotations

import os
from pathlib import Path

from resnet_mlops.params import load_params
from resnet_mlops.registry.register import Decision, RegisterPaths, register
from resnet_mlops.tracking import tracking_uri


def run_register(
    params_path: Path,
    overrides: list[str],
    model: Path,
    evaluation: Path,
    data: Path | None,
    out: Path,
) -> Decision:
    """Register ``model`` as ``challenger``, make it ``champion`` if it wins; write ``out``."""
    params, _ = load_params(params_path, overrides)
    paths = RegisterPaths(
        model, evaluation, data or Path("data/preprocessed") / params.dataset, out
    )
    # MLflow draws a progress bar per upload; a stage wants its one line of result.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return register(params.dataset, params.register, paths, tracking_uri(Path.cwd()))
