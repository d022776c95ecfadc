"""The ``register`` stage: the evaluated model into the MLflow Model Registry, champion gated."""

from __future__ import annotations

import os
from pathlib import Path

from resnet_mlops.io import check_output_file, write_json_atomic
from resnet_mlops.mlflow_store import tracking_uri
from resnet_mlops.params import load_params
from resnet_mlops.registry.register import Decision, RegisterPaths, register

# The champion decision at a glance: the register stage's DVC metrics, its columns in
# `dvc exp show`. The whole decision (reason, both errors, margin) stays in ``out``.
COMPARED_METRICS = ("promoted", "version")


def run_register(
    params_path: Path,
    overrides: list[str],
    model: Path,
    evaluation: Path,
    data: Path | None,
    out: Path,
    headline: Path | None = None,
) -> Decision:
    """Register ``model`` as ``challenger``, make it ``champion`` if it wins; write ``out``,
    and ``headline`` (whether it was promoted, its version) when given.

    Raises:
        OutputError: ``out`` or ``headline`` is a file ``resnet register`` did not write.
    """
    params, _ = load_params(params_path, overrides)
    if headline is not None:
        check_output_file(headline, "register --headline")
    paths = RegisterPaths(
        model, evaluation, data or Path("data/preprocessed") / params.dataset, out
    )
    # MLflow draws a progress bar per upload; a stage wants its one line of result.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    decision = register(params.dataset, params.register, paths, tracking_uri(Path.cwd()))
    if headline is not None:
        recorded = decision.as_metrics()
        write_json_atomic(headline, {key: recorded[key] for key in COMPARED_METRICS})
    return decision
