"""Runs trained without MLflow (bench/gpu_recipe.py on a lent GPU) and CUDA graphs."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from resnet_mlops.data.loaders import LoaderParams
from resnet_mlops.engine.artifact import model_kwargs, save_model
from resnet_mlops.io import sha256_file
from resnet_mlops.models import build_model
from resnet_mlops.params.base import load_sections
from resnet_mlops.params.train import TrainParams
from resnet_mlops.report.runs import find_runs
from resnet_mlops.train.loop import TrainJob, TrainPaths, train
from tests.support.model_file import run_classifiers
from tests.support.project import PARAMS

SMALL = [
    "train.batch_size=32",
    "train.schedule.length=30",
    "train.schedule.milestones=[20]",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
    "train.cuda_graphs=true",  # asked for, and ignored on a CPU
]


def resnet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "resnet_mlops.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # trains, then two imports; the refusals below keep import-run in the fast set
def test_a_run_trained_without_mlflow_imports_as_a_run_of_a_grid(
    tmp_path: Path, small_cifar: Path, capfd: pytest.CaptureFixture
) -> None:
    dataset, sections, tree = load_sections(
        PARAMS, {"train": TrainParams, "loader": LoaderParams}, SMALL
    )
    run = tmp_path / "resnet20"
    paths = TrainPaths(*(run / n for n in ("checkpoint.pt", "model.pt", "m.json", "history.json")))
    provenance = {"device": "cpu", "data_version": "abc123", "mlflow.source.git.commit": "c0ffee"}
    train(TrainJob(dataset, sections["train"], sections["loader"], small_cifar, paths,
                   config=tree, provenance=provenance))  # fmt: skip
    assert "train.cuda_graphs: ignored" in capfd.readouterr().err

    done = resnet("import-run", str(run), "--grid", "imported", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client = MlflowClient()
    records, unfinished = find_runs(client, "resnet-cifar10", "imported", "test store")
    assert unfinished == 0 and [r.model for r in records] == ["resnet20"]
    imported = client.get_run(records[0].run_id)
    tags = imported.data.tags
    assert tags["mlflow.source.git.commit"] == "c0ffee" and tags["data.version"] == "abc123"
    assert tags["imported_from"] == str(run) and tags["device"] == "cpu"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["grid"] == "imported" and parent.info.status == "FINISHED"
    assert imported.data.params["train.model"] == "resnet20"
    curve = client.get_metric_history(imported.info.run_id, "val_error")
    assert [m.step for m in curve] == list(range(1, len(records[0].curves["val_error"]) + 1))
    (logged,) = run_classifiers(client, imported.info.run_id)  # one model: the classifier
    assert logged.name == "classifier"
    assert logged.tags["model.sha256"] == sha256_file(run / "model.pt")

    # A run that finished in a later lease joins the same parent, not a second one.
    later = tmp_path / "resnet20-later"
    shutil.copytree(run, later)
    again = resnet("import-run", str(later), "--grid", "imported", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    records, _ = find_runs(client, "resnet-cifar10", "imported", "test store")
    assert len(records) == 2
    parents = {client.get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in records}
    assert parents == {parent.info.run_id}
    grid_runs = client.search_runs([imported.info.experiment_id], "tags.grid = 'imported'")
    assert len(grid_runs) == 3  # one parent, two children


@pytest.mark.slow  # runs the console script three times (20 s)
def test_import_run_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    missing = resnet("import-run", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "history.json" in missing.stderr

    unfinished = tmp_path / "stopped"
    unfinished.mkdir()
    (unfinished / "history.json").write_text('[{"epoch": 1, "val_error": 50.0}]')
    (unfinished / "checkpoint.pt").write_bytes(b"not read")
    stopped = resnet("import-run", str(unfinished), cwd=tmp_path)
    assert stopped.returncode == 1 and "did not finish" in stopped.stderr
    assert "Traceback" not in stopped.stderr

    # A grid with one good folder and one unfinished: nothing reaches MLflow, no parent either.
    good = tmp_path / "good"
    model = build_model("resnet20", **model_kwargs("resnet20", "default", False, 10))
    save_model(good / "model.pt", model, name="resnet20",
               kwargs=model_kwargs("resnet20", "default", False, 10),
               preprocessing={"dataset": "cifar10", "input_size": 32}, provenance={},
               metrics={}, config={"dataset": "cifar10"})  # fmt: skip
    (good / "history.json").write_text('[{"epoch": 1, "val_error": 50.0}]')
    mixed = resnet("import-run", str(good), str(unfinished), "--grid", "half", cwd=tmp_path)
    assert mixed.returncode == 1 and "did not finish" in mixed.stderr
    assert (
        MlflowClient().search_runs(
            [e.experiment_id for e in MlflowClient().search_experiments()], "tags.grid = 'half'"
        )
        == []
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_train_and_evaluate_like_the_plain_forward() -> None:
    from resnet_mlops.train.graphs import capture

    torch.manual_seed(0)
    plain = build_model("resnet20", **model_kwargs("resnet20", "default", False, 10)).cuda()
    graphed = copy.deepcopy(plain)
    restore = capture(graphed, torch.zeros(16, 3, 32, 32, device="cuda"), None)
    for model in (plain, graphed):
        assert torch.equal(model.bn1.running_mean, plain.bn1.running_mean)  # put back
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (plain, graphed)]
    for size in (16, 16, 8):  # 8: a partial batch takes the plain forward
        images, labels = torch.randn(size, 3, 32, 32, device="cuda"), torch.randint(0, 10, (size,))
        for model, optimizer in zip((plain, graphed), optimizers, strict=True):
            loss = F.cross_entropy(model(images), labels.cuda())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for a, b in zip(plain.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    images = torch.randn(16, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), graphed.eval()(images))
    restore()
    assert "forward" not in graphed.__dict__
