"""The ``report`` stage: the paper's tables and figures from the MLflow runs."""

from __future__ import annotations

from pathlib import Path

from resnet_mlops.io import check_output_file, write_json_atomic
from resnet_mlops.params import load_params
from resnet_mlops.report import Report, build_report
from resnet_mlops.report.build import summary_metrics
from resnet_mlops.tracking import tracking_uri


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
    report = build_report(
        tracking_uri(Path.cwd()),
        out,
        experiment=experiment,
        grid=grid if grid is not None else settings.grid or None,
        data_dir=data or (default_data if default_data.exists() else None),
        response_images=settings.response_images,
    )
    if metrics is not None:
        write_json_atomic(metrics, summary_metrics(report))
    return report
