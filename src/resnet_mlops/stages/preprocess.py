"""The ``preprocess`` stage: verified data in, the training format out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_mlops.data.preprocess import preprocess
from resnet_mlops.params import load_params


def run_preprocess(
    params_path: Path,
    overrides: list[str],
    prepared: Path | None,
    out: Path | None,
    report: Path,
    *,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Arrays for CIFAR-10, shards for ImageNet; returns the output folder and the report."""
    params, _ = load_params(params_path, overrides)
    prepared = prepared or Path("data/prepared") / params.dataset
    out = out or Path("data/preprocessed") / params.dataset
    return out, preprocess(params.dataset, params.preprocess, prepared, out, report, force=force)
