"""The ImageNet path end to end on the real sample (../shared/datasets/imagenet-sample.tar.gz):
prepare, preprocess, a few iterations of ResNet-18 under the paper's ImageNet recipe from
studies.yaml, single-crop and 10-crop evaluation, and the report's ImageNet table."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from resnet_mlops.data.prepare import PrepareParams, prepare
from resnet_mlops.data.preprocess import PreprocessParams, preprocess
from resnet_mlops.params.base import load_stage_params
from resnet_mlops.report import build_report
from resnet_mlops.report.studies import load_studies
from resnet_mlops.stages.evaluate import EvalPaths, run_evaluation
from resnet_mlops.stages.train import run_training
from tests.support.project import IMAGENET_SAMPLE, PARAMS, REPO

CLASSES = 6
EXPERIMENT = "report-imagenet-test"


def sample_tree(root: Path, classes: int) -> Path:
    """``train/<wnid>/`` and ``val/<wnid>/`` holding the sample's image of the first
    ``classes`` classes (the sample has one image per class, so both splits share it)."""
    with tarfile.open(IMAGENET_SAMPLE) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 2:
                continue
            if len({p.name for p in (root / "train").glob("*")}) == classes:
                break
            data = archive.extractfile(member).read()
            for split in ("train", "val"):
                folder = root / split / parts[0]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / parts[1]).write_bytes(data)
    return root


@pytest.mark.slow
def test_imagenet_recipe_trains_evaluates_ten_crop_and_reports(tmp_path: Path) -> None:
    if not IMAGENET_SAMPLE.exists():
        pytest.skip(f"{IMAGENET_SAMPLE} is not here (the team's dataset mirror)")
    tree = sample_tree(tmp_path / "tree", CLASSES)
    recipe = list(load_studies(REPO / "studies.yaml")["imagenet-recipes"].overrides)
    _, prep = load_stage_params(
        PARAMS, "prepare", PrepareParams, [*recipe, f"prepare.imagenet.source={tree}"]
    )
    prepare("imagenet", prep, tmp_path / "prepared", tmp_path / "prepare.json", tmp_path / "dl")
    _, pre = load_stage_params(
        PARAMS, "preprocess", PreprocessParams, [*recipe, "preprocess.imagenet.max_side=320"]
    )
    data = tmp_path / "preprocessed"
    preprocess("imagenet", pre, tmp_path / "prepared", data, tmp_path / "preprocess.json")

    # The paper's recipe (epochs, scale augmentation, 10-crop), shrunk to 3 iterations.
    shrink = [
        f"train.experiment={EXPERIMENT}",
        "train.model=resnet18",
        "train.batch_size=4",
        "train.schedule.unit=iterations",
        "train.schedule.length=3",
        "train.schedule.milestones=[2]",
        "train.checkpoint_every=0",
        "train.log_every=1",
        "loader.num_threads=1",
        "evaluate.batch_size=4",
    ]
    out = tmp_path / "models"
    run_training(
        PARAMS, [*recipe, *shrink], data, out, out / "train.json", out / "history.json", False
    )
    paths = EvalPaths(out / "eval.json", out / "confusion.csv", out / "confusion.png")
    metrics = run_evaluation(PARAMS, [*recipe, *shrink], out / "model.pt", data, paths)
    assert metrics["split"] == "val" and metrics["samples"] == CLASSES
    assert {"test_top1_error", "test_10crop_top1_error", "test_10crop_top5_error"} <= set(metrics)

    uri = os.environ["MLFLOW_TRACKING_URI"]
    report = build_report(uri, tmp_path / "report", experiment=EXPERIMENT)
    (row,) = [row for row in report.rows if row["table"] == "imagenet"]
    assert row["model"] == "resnet18" and row["shortcut"] == "B" and row["runs"] == 1
    assert row["top1"] == pytest.approx(metrics["test_top1_error"])
    assert row["top5_10crop"] == pytest.approx(metrics["test_10crop_top5_error"])
    assert row["paper_top1_10crop"] == 27.88
    assert report.figures == []  # no CIFAR-10 runs: no Figures 6 and 7
    page = report.html.read_text()
    assert "ImageNet validation error" in page and "<td>resnet18</td>" in page
    assert "CIFAR-10 test error by depth" not in page
