"""The ``report`` stage: the paper's tables and figures from the MLflow runs."""

from __future__ import annotations

from pathlib import Path

from mlflow.exceptions import MlflowException

from resnet_mlops.io import check_output_file, write_json_atomic
from resnet_mlops.mlflow_store import describe, short_http_limits, tracking_uri
from resnet_mlops.params import load_params
from resnet_mlops.report import Report, ReportError, build_report
from resnet_mlops.report.build import summary_metrics


def run_report(
    params_path: Path,
    overrides: list[str],
    out: Path,
    *,
    experiment: str | None = None,
    grid: str | None = None,
    data: Path | None = None,
    metrics: Path | None = None,
) -> Report:
    """Build the report page in ``out`` (and its numbers in ``metrics``, for DVC).

    ``experiment`` and ``grid`` default to the report section (``experiment: auto`` is the
    training experiment); ``data`` to the preprocessed CIFAR-10 test images when present.
    """
    if metrics is not None:
        check_output_file(metrics, "report --metrics")
    params, _ = load_params(params_path, overrides)
    settings = params.report
    if experiment is None:
        experiment = settings.experiment
        if experiment == "auto":
            experiment = params.train.experiment
    default_data = Path("data/preprocessed/cifar10")
    # A server that is down: one error now, not minutes of MLflow's retries.
    uri = tracking_uri(Path.cwd())
    try:
        with short_http_limits():
            report = build_report(
                uri,
                out,
                experiment=experiment,
                grid=grid if grid is not None else settings.grid or None,
                data_dir=data or (default_data if default_data.exists() else None),
                response_images=settings.response_images,
            )
    except MlflowException as error:
        raise ReportError(f"MLflow tracking at {uri}: {describe(error)}") from None
    if metrics is not None:
        write_json_atomic(metrics, summary_metrics(report))
    return report
