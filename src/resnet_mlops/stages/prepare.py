"""The ``prepare`` stage: the raw source in, verified data, its manifest and a report out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_mlops.data.prepare import anchor_sources, prepare
from resnet_mlops.params import load_params
from resnet_mlops.project import project_root


def run_prepare(
    params_path: Path,
    overrides: list[str],
    out: Path | None,
    report: Path,
    download_dir: Path,
    *,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Prepare the data set params.yaml names; returns the output folder and the report."""
    params, _ = load_params(params_path, overrides)
    stage = params.prepare
    root = project_root(Path.cwd())
    if root != Path.cwd().resolve():  # a DVC experiment's copy: paths are the project's
        stage = anchor_sources(stage, root)
    out = out or Path("data/prepared") / params.dataset
    return out, prepare(params.dataset, stage, out, report, download_dir, force=force)
