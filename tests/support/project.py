"""Where the project and the team's data are, and a copy of the project for tools that run
in a repository of their own (dvc, Prefect)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from resnet_mlops.data.prepare import PrepareParams
from resnet_mlops.data.preprocess import PreprocessParams
from resnet_mlops.params.base import load_stage_params

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


SHRUNK_MODEL_NAME = "dvc-test-classifier"
# The real params.yaml, shrunk: 200 training images, 30 iterations of batches of 32.
SHRINK = [
    "prepare.workers=1",
    "preprocess.cifar10.val_size=50",
    "preprocess.workers=1",
    "loader.num_threads=1",
    "train.batch_size=32",
    "train.schedule.length=30",
    "train.schedule.milestones=[20]",
    "train.log_every=10",
    "train.checkpoint_every=0",
    "evaluate.batch_size=100",
    f"register.name={SHRUNK_MODEL_NAME}",
]
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def prepare_params(*overrides: str) -> PrepareParams:
    return load_stage_params(PARAMS, "prepare", PrepareParams, list(overrides))[1]


def preprocess_params(*overrides: str) -> PreprocessParams:
    return load_stage_params(PARAMS, "preprocess", PreprocessParams, list(overrides))[1]


def class_folders(root: Path, per_class: dict[str, int]) -> Path:
    """``root/<split>/<class>/<file>.jpg``: the first images of each class from the mirror."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_MIRROR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) < per_class[parts[0]]:
                counts[key] = counts.get(key, 0) + 1
                target = root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
            if len(counts) == 10 * len(per_class) and all(
                n == per_class[split] for (split, _), n in counts.items()
            ):
                break
    return root


def run(*command: str, cwd: Path) -> str:
    """Run a command with this venv's tools first on PATH; its output, or a failed assertion."""
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-5000:]}"
    return output
