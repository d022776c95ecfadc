"""The report's tables as rows of plain values: Table 6 (CIFAR-10) and the ImageNet table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from resnet_mlops.models import build_model, count_parameters
from resnet_mlops.report.paper import IMAGENET_10CROP, TABLE6
from resnet_mlops.report.runs import RunRecord


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _groups(runs: list[RunRecord], dataset: str) -> dict[tuple[str, str, str], list[RunRecord]]:
    grouped: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.dataset == dataset:
            grouped[run.group].append(run)
    return grouped


def table6_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per CIFAR-10 model and shortcut option that ran, then the paper's other rows.

    Errors are percentages: the final test error (``resnet evaluate``'s, else the last
    epoch's when that evaluation was on the test set) and the final training error (the
    last epoch's, measured on the fly with augmentation, as the paper's Figure 6 does).
    """
    rows = []
    grouped = _groups(runs, "cifar10")
    for (_, model, shortcut), members in grouped.items():
        tests = [t for t in (r.test_error() for r in members) if t is not None]
        trains = [r.metrics["train_error"] for r in members if "train_error" in r.metrics]
        test_mean, test_std = _stats([value for value, _ in tests])
        train_mean, train_std = _stats(trains)
        paper = TABLE6.get(model) if shortcut in ("A", "none") else None
        rows.append(
            {
                "model": model,
                "layers": members[0].layers,
                "shortcut": shortcut,
                "params_m": round(count_parameters(build_model(model)) / 1e6, 2),
                "runs": len(members),
                "seeds": sorted({r.seed for r in members}),
                "test_error": test_mean,
                "test_error_std": test_std,
                "test_error_source": sorted({source for _, source in tests}),
                "train_error": train_mean,
                "train_error_std": train_std,
                "paper_error": paper.error if paper else None,
                "paper_mean_std": list(paper.mean_std) if paper and paper.mean_std else None,
                "paper_params_m": paper.params_m if paper else None,
            }
        )
    ran = {row["model"] for row in rows if row["shortcut"] in ("A", "none")}
    for model, paper in TABLE6.items():
        if model not in ran:
            rows.append(
                {
                    "model": model,
                    "layers": paper.layers,
                    "shortcut": "A",
                    "params_m": None,
                    "runs": 0,
                    "seeds": [],
                    "test_error": None,
                    "test_error_std": None,
                    "test_error_source": [],
                    "train_error": None,
                    "train_error_std": None,
                    "paper_error": paper.error,
                    "paper_mean_std": list(paper.mean_std) if paper.mean_std else None,
                    "paper_params_m": paper.params_m,
                }
            )
    # By depth, each plain net just above the residual one: the degradation problem at a glance.
    return sorted(rows, key=lambda r: (r["layers"], r["shortcut"] != "none", r["shortcut"]))


IMAGENET_METRICS = {
    "top1": "test_top1_error",
    "top5": "test_top5_error",
    "top1_10crop": "test_10crop_top1_error",
    "top5_10crop": "test_10crop_top5_error",
}


def imagenet_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per ImageNet model and shortcut that ran: single-crop and 10-crop top-1/top-5
    validation error (percent, mean over seeds) from ``resnet evaluate``, beside the paper's
    10-crop numbers."""
    rows = []
    for (_, model, shortcut), members in _groups(runs, "imagenet").items():
        row: dict[str, Any] = {"model": model, "shortcut": shortcut, "runs": len(members)}
        for column, metric in IMAGENET_METRICS.items():
            mean, std = _stats([r.metrics[metric] for r in members if metric in r.metrics])
            row[column], row[f"{column}_std"] = mean, std
        top1, top5, source = IMAGENET_10CROP.get(model, (None, None, None))
        row.update(paper_top1_10crop=top1, paper_top5_10crop=top5, paper_source=source)
        rows.append(row)
    return sorted(
        rows, key=lambda r: (r["model"].startswith("resnet"), len(r["model"]), r["model"])
    )
