"""``resnet evaluate``: the paper's test protocols on a trained model file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader, dataset_classes
from resnet_mlops.engine.artifact import load_model
from resnet_mlops.engine.metrics import EvalResult, evaluate_model
from resnet_mlops.engine.runtime import require_device, resolve_precision, setup_runtime
from resnet_mlops.errors import DataError
from resnet_mlops.evaluation.plots import plot_confusion
from resnet_mlops.io import atomic_write_bytes, check_output_file, write_json_atomic
from resnet_mlops.params import check_split, load_params
from resnet_mlops.params.evaluate import EvaluateParams


@dataclass(frozen=True)
class EvalPaths:
    """Where ``evaluate`` writes."""

    metrics: Path  # JSON, every figure
    confusion_csv: Path  # actual,predicted rows: DVC's confusion template
    confusion_png: Path
    headline: Path | None = None  # COMPARED_METRICS alone: the stage's DVC metrics


# The figures experiments are compared by: the evaluate stage's DVC metrics, its columns in
# `dvc exp show`. The rest (loss, top-5, per-class accuracy, the split) stays in ``metrics``.
COMPARED_METRICS = ("test_top1_error", "test_10crop_top1_error")


def confusion_rows(confusion: torch.Tensor, classes: list[str]) -> str:
    """One ``actual,predicted`` line per image, the layout ``dvc plots`` expects."""
    lines = ["actual,predicted"]
    for i, j in torch.nonzero(confusion).tolist():
        lines.extend([f"{classes[i]},{classes[j]}"] * int(confusion[i, j]))
    return "\n".join(lines) + "\n"


def evaluate(
    dataset: str,
    params: EvaluateParams,
    loader_params: LoaderParams,
    model_path: Path,
    data_dir: Path,
    paths: EvalPaths,
) -> dict[str, Any]:
    """Top-1/top-5 error, loss and per-class accuracy on ``params.split``, and its plots.

    ImageNet is scored on the single 224 centre crop and, with ``ten_crop``, on 10 crops.
    """
    model, meta = load_model(model_path)
    classes = list(meta["preprocessing"]["classes"])
    data_classes = dataset_classes(dataset, data_dir)
    if len(data_classes) != len(classes):
        raise DataError(
            f"{model_path}: the model has {len(classes)} classes, the data in {data_dir} has "
            f"{len(data_classes)}; evaluate a model trained on this data"
        )
    runtime = setup_runtime(params.device)
    channels_last = bool(meta["config"].get("train", {}).get("channels_last", False))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(runtime.device, memory_format=memory_format)
    precision = meta["config"].get("train", {}).get("precision", "fp32")
    dtype = resolve_precision(precision, runtime.device)

    def run(ten_crop: bool) -> EvalResult:
        loader = build_loader(
            LoaderSpec(
                dataset,
                params.split,
                data_dir,
                params.batch_size,
                params=loader_params,
                train=False,
                ten_crop=ten_crop,
                memory_format="channels_last" if channels_last else "contiguous",
                device=runtime.device,
            )
        )
        return evaluate_model(
            model,
            loader,
            num_classes=len(classes),
            runtime=runtime,
            dtype=dtype,
            memory_format=memory_format,
        )

    single = run(False)
    metrics: dict[str, Any] = {
        "model": meta["model"],
        "split": params.split,
        "samples": single.samples,
        **single.as_metrics("test"),
        "per_class_accuracy": dict(zip(classes, single.per_class_accuracy, strict=True))
        if len(classes) <= 100
        else None,
    }
    if dataset == "imagenet" and params.ten_crop:
        metrics.update(run(True).as_metrics("test_10crop"))
    write_json_atomic(paths.metrics, metrics)
    if paths.headline is not None:
        compared = {key: metrics[key] for key in COMPARED_METRICS if key in metrics}
        write_json_atomic(paths.headline, compared)
    atomic_write_bytes(paths.confusion_csv, confusion_rows(single.confusion, classes).encode())
    title = (
        f"{meta['model']} on {dataset} {params.split}: top-1 error {100 * single.top1_error:.2f}%"
    )
    plot_confusion(single.confusion, classes, paths.confusion_png, title)
    return metrics


def log_to_training_run(
    model_path: Path, metrics: dict[str, Any], paths: EvalPaths, params: EvaluateParams
) -> None:
    """Add the test metrics and plots to the MLflow run that trained the model, if any."""
    from resnet_mlops.mlflow_store import tracking_uri
    from resnet_mlops.tracking import RunTracker

    _, meta = load_model(model_path)
    run_id = meta["provenance"].get("mlflow_run_id")
    if not run_id:
        return
    experiment = meta["config"].get("train", {}).get("experiment", "Default")
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    step = int(meta["metrics"].get("epoch", 0))
    with RunTracker(
        experiment=experiment,
        tracking_uri=tracking_uri(Path.cwd()),
        run_id=run_id,
        system_metrics=False,
    ) as tracker:
        tracker.start({"evaluate": {"split": params.split, "ten_crop": params.ten_crop}})
        tracker.log_metrics(numbers, step)
        for path in (paths.metrics, paths.confusion_png):
            tracker.log_artifact(path, "evaluation")


def run_evaluation(
    params_path: Path, overrides: list[str], model_path: Path, data: Path | None, paths: EvalPaths
) -> dict[str, Any]:
    """Parse params, :func:`evaluate`, and log the results to the model's MLflow run.

    Raises:
        OutputError: ``paths.metrics`` or ``paths.headline`` is a file ``resnet evaluate``
            did not write.
    """
    params, _ = load_params(params_path, overrides)
    check_split(params, params_path)
    require_device(params_path, "evaluate.device", params.evaluate.device)
    dataset, sections = params.dataset, {"evaluate": params.evaluate, "loader": params.loader}
    data_dir = data or Path("data/preprocessed") / dataset
    check_output_file(paths.metrics, "evaluate --metrics")
    if paths.headline is not None:
        check_output_file(paths.headline, "evaluate --headline")
    metrics = evaluate(
        dataset, sections["evaluate"], sections["loader"], model_path, data_dir, paths
    )
    log_to_training_run(model_path, metrics, paths, sections["evaluate"])
    return metrics
