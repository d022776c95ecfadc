"""Where the project and the team's data are, and a copy of the project for tools that run
in a repository of their own (dvc, Prefect)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
DATASETS = REPO.parent / "shared" / "datasets"
CIFAR_MIRROR = DATASETS / "cifar10-jpg.tar.gz"
IMAGENET_SAMPLE = DATASETS / "imagenet-sample.tar.gz"
# What a clone holds besides src/: the pipeline, its params and the DVC config with its remote.
PROJECT_FILES = (
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots/offline.html",  # the plots page (plots.html_template)
)


def copy_project(
    repo: Path, files: tuple[str, ...] = PROJECT_FILES, packages: tuple[str, ...] = ()
) -> Path:
    """Copy the pipeline's files and ``src/resnet_mlops`` (the code deps of dvc.yaml; the
    ``resnet`` that runs is the installed one) plus ``packages`` into ``repo``."""
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, repo / name)
    for package in ("src/resnet_mlops", *packages):
        shutil.copytree(
            REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return repo
