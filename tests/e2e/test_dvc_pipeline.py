"""The DVC pipeline with the real tools: ``dvc repro`` of all five stages in a temporary git
repository on a small real CIFAR-10 subset, the no-op second repro, a params change that reruns
only what it should, ``dvc push`` to the default remote; and ``resnet train --auto-resume``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from resnet_mlops.engine.checkpoint import peek_checkpoint
from resnet_mlops.params.base import apply_overrides, read_yaml
from resnet_mlops.stages.train import run_training
from tests.support.project import PARAMS, SHRINK, class_folders, copy_project, run
from tests.support.project import SHRUNK_MODEL_NAME as NAME

STAGES = ("params", "prepare", "preprocess", "train", "evaluate", "register", "report")


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with the project's pipeline, DVC config and source, and params that
    point the prepare stage at a small class-folder subset of the mirror."""
    tmp = tmp_path_factory.mktemp("dvc")
    source = class_folders(tmp / "cifar-subset", {"train": 20, "test": 10})
    repo = copy_project(tmp / "repo")
    tree = apply_overrides(read_yaml(PARAMS), [f"prepare.cifar10.source={source}", *SHRINK])
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    run("git", "init", "-q", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "pipeline", cwd=repo)
    return repo


@pytest.mark.slow
def test_repro_then_nothing_then_only_what_a_param_change_touches(repo: Path) -> None:
    first = run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert ran(first) == list(STAGES)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == list(STAGES)
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["model"] == "resnet20"
    assert set(lock["stages"]["prepare"]["params"]["params.yaml"]) == {
        "dataset",
        "prepare.cifar10",
        "prepare.skip_corrupt",
        "prepare.workers",
        "prepare.max_pixels",
        "prepare.max_file_bytes",
    }
    decision = json.loads((repo / "metrics" / "register.json").read_text())
    assert decision["name"] == NAME and decision["promoted"] and decision["version"] == 1

    # The version records the DVC hash of the data it was trained on, as dvc.lock has it.
    outs = {out["path"]: out for out in lock["stages"]["preprocess"]["outs"]}
    # The store the stages used: the session's (conftest), named explicitly because MLflow
    # keeps a process-wide tracking URI that other tests may have pointed elsewhere.
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(NAME, "1")
    assert version.tags["data.dvc_md5"] == outs["data/preprocessed/cifar10"]["md5"]

    metrics = json.loads(run(sys.executable, "-m", "dvc", "metrics", "show", "--json", cwd=repo))
    (workspace,) = metrics.values()  # keyed by the repo's path ("" here)
    # The DVC metrics (the columns of `dvc exp show`) are the headline figures alone; each
    # stage's full report is a plain output beside them.
    shown = {path: found["data"] for path, found in workspace["data"].items()}
    assert {path: sorted(data) for path, data in shown.items()} == {
        "metrics/headline/train.json": ["images_per_second", "train_error", "val_error"],
        "metrics/headline/evaluate.json": ["test_top1_error"],
        "metrics/headline/register.json": ["promoted", "version"],
    }
    evaluate = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert evaluate["test_top1_error"] == shown["metrics/headline/evaluate.json"]["test_top1_error"]
    assert 0 <= evaluate["test_top1_error"] <= 100 and evaluate["samples"] == 100
    assert shown["metrics/headline/register.json"] == {"promoted": True, "version": 1}
    plots = json.loads(run(sys.executable, "-m", "dvc", "plots", "show", "--json", cwd=repo))
    assert set(plots["data"]) == {
        "plots/train_history.json",
        "plots/confusion.csv",
        "plots/confusion.png",
    }

    second = run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert ran(second) == []
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change" in second

    run(sys.executable, "-m", "dvc", "push", cwd=repo)
    remote = repo.parent / "resnet-mlops-dvc-storage"  # .dvc/config: ../../resnet-mlops-...
    assert any(path.is_file() for path in remote.rglob("*"))

    tree = yaml.safe_load((repo / "params.yaml").read_text())
    tree["train"]["model"] = "plain20"
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    third = run(sys.executable, "-m", "dvc", "repro", cwd=repo)
    assert ran(third) == ["params", "train", "evaluate", "register", "report"]
    assert "Stage 'prepare' didn't change" in third
    assert "Stage 'preprocess' didn't change" in third
    # The kept checkpoint belongs to the old model: it is not resumed.
    assert "not resuming models/checkpoint.pt" in third
    assert json.loads((repo / "metrics" / "evaluate.json").read_text())["model"] == "plain20"
    assert json.loads((repo / "metrics" / "register.json").read_text())["version"] == 2


@pytest.mark.slow
def test_auto_resume_continues_only_a_checkpoint_of_the_same_run(
    tmp_path: Path, small_cifar: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = [
        "loader.num_threads=1",
        "train.batch_size=32",
        "train.schedule.length=6",
        "train.schedule.milestones=[4]",
        "train.checkpoint_every=0",
    ]

    def train():
        out = tmp_path / "models"
        return run_training(
            PARAMS,
            small,
            small_cifar,
            out,
            tmp_path / "m.json",
            tmp_path / "h.json",
            "auto",
        )

    assert train().iterations == 6
    key = peek_checkpoint(tmp_path / "models" / "checkpoint.pt")["resume_key"]
    assert key["train"]["schedule"]["length"] == 6 and key["dataset"] == "cifar10"
    capsys.readouterr()
    again = train()  # the finished run's checkpoint: nothing left to train
    assert again.iterations == 6 and again.history[-1]["iteration"] == 6.0
    err = capsys.readouterr().err
    assert "not resuming" not in err and "had already finished (6 iterations)" in err
    # A changed config starting afresh is in the pipeline test (train.model changes there).


@pytest.mark.slow
def test_bad_params_stop_dvc_before_any_stage_deletes_its_outputs(repo: Path) -> None:
    """DVC deletes a stage's outputs before it runs the stage's command: the params stage,
    which every stage depends on, must reject the file first. Its marker never changes, so a
    valid change still reruns only the stages whose params changed.

    On the module's repository: after the pipeline test its stages are up to date (nothing
    runs here); alone, this runs them first."""
    tree = yaml.safe_load((repo / "params.yaml").read_text())

    def write(tree: dict) -> None:
        (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))

    run(sys.executable, "-m", "dvc", "repro", "train", cwd=repo)
    kept = ["models/model.pt", "metrics/train.json", "plots/train_history.json", "dvc.lock"]
    kept += ["data/preprocessed/cifar10/manifest.json", "metrics/prepare.json"]
    before = {path: (repo / path).read_bytes() for path in kept}
    marker = yaml.safe_load(before["dvc.lock"])["stages"]["params"]["outs"][0]["md5"]

    misspelled = yaml.safe_load(yaml.safe_dump(tree))
    misspelled["train"]["optimizer"]["lrr"] = 0.1
    reversed_milestones = apply_overrides(tree, ["train.schedule.length=8"])
    reversed_milestones["train"]["schedule"]["milestones"] = [3, 1]
    for bad, message in [
        (misspelled, "params.yaml: unknown key train.optimizer.lrr"),
        (reversed_milestones, "params.yaml: train.schedule.milestones: must be strictly"),
    ]:
        write(bad)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0 and f"error: {message}" in output, output[-3000:]
        assert ran(output) == ["params"]
        for path, data in before.items():
            assert (repo / path).read_bytes() == data, path

    evaluate_only = apply_overrides(tree, ["evaluate.batch_size=50"])
    write(evaluate_only)
    again = run(sys.executable, "-m", "dvc", "repro", "train", cwd=repo)
    assert ran(again) == ["params"]
    for stage in ("prepare", "preprocess", "train"):
        assert f"Stage '{stage}' didn't change" in again
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["params"]["outs"][0]["md5"] == marker
    write(apply_overrides(evaluate_only, ["train.log_every=1"]))
    train_only = run(sys.executable, "-m", "dvc", "repro", "train", cwd=repo)
    assert ran(train_only) == ["params", "train"]
