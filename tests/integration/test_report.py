"""``resnet report``: the paper's tables and figures from real (tiny) MLflow runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from resnet_mlops.cli import app
from resnet_mlops.lineage import RUN_TAGS_ENV
from resnet_mlops.models import build_model
from resnet_mlops.params.base import apply_overrides, read_yaml
from resnet_mlops.report import ReportError, build_report, log_report
from resnet_mlops.report.responses import response_layers, response_stds
from resnet_mlops.stages.evaluate import EvalPaths, run_evaluation
from resnet_mlops.stages.train import run_training
from tests.support.project import PARAMS, copy_project

EXPERIMENT = "report-test"
GRID = "tiny-paper"
TINY = [
    f"train.experiment={EXPERIMENT}",
    "train.batch_size=50",
    "train.schedule.length=16",  # two epochs of 8 batches (400 training images)
    "train.schedule.milestones=[8]",
    "train.checkpoint_every=0",
    "train.log_every=8",
    "loader.num_threads=1",
]


def _train(root: Path, data: Path, model: str, seed: int, tags: dict[str, str]) -> str:
    """Train and evaluate one tiny run tagged like a grid's child; returns its run id."""
    out = root / f"{model}-{seed}"
    os.environ[RUN_TAGS_ENV] = json.dumps(tags)
    try:
        run_training(
            PARAMS,
            [*TINY, f"train.model={model}", f"train.seed={seed}"],
            data,
            out,
            out / "metrics.json",
            out / "history.json",
            False,
        )
    finally:
        del os.environ[RUN_TAGS_ENV]
    paths = EvalPaths(out / "eval.json", out / "confusion.csv", out / "confusion.png")
    run_evaluation(PARAMS, [], out / "model.pt", data, paths)
    return torch.load(out / "model.pt", weights_only=False)["provenance"]["mlflow_run_id"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, small_cifar: Path) -> dict[str, object]:
    """A tiny grid in the session's throwaway store: a parent run, plain20 once and
    resnet20 with two seeds, plus a run of the grid that never finished."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    parent = client.create_run(experiment_id, run_name=f"grid {GRID}", tags={"grid": GRID})
    tags = {"mlflow.parentRunId": parent.info.run_id, "grid": GRID}
    root = tmp_path_factory.mktemp("grid")
    runs = {
        (model, seed): _train(root, small_cifar, model, seed, tags)
        for model, seed in (("plain20", 0), ("resnet20", 0), ("resnet20", 1))
    }
    client.create_run(experiment_id, run_name="crashed", tags={"grid": GRID, "model": "plain56"})
    client.set_terminated(parent.info.run_id)
    return {"uri": uri, "parent": parent.info.run_id, "runs": runs, "data": small_cifar}


@pytest.mark.slow
def test_report_has_table6_with_seeds_and_both_figures(grid, tmp_path: Path) -> None:
    report = build_report(
        grid["uri"], tmp_path, experiment=EXPERIMENT, grid=GRID, data_dir=grid["data"]
    )
    client = MlflowClient(grid["uri"])
    errors = {
        key: client.get_run(run_id).data.metrics["test_top1_error"]
        for key, run_id in grid["runs"].items()
    }
    rows = {row["model"]: row for row in report.rows if row["table"] == "table6"}
    # Two seeds of ResNet-20: mean and sample std of their test errors, beside the paper's.
    resnet20 = rows["resnet20"]
    seeds = [errors[("resnet20", 0)], errors[("resnet20", 1)]]
    assert resnet20["runs"] == 2 and resnet20["seeds"] == [0, 1]
    assert resnet20["test_error"] == pytest.approx(statistics.fmean(seeds))
    assert resnet20["test_error_std"] == pytest.approx(statistics.stdev(seeds))
    assert resnet20["test_error_source"] == ["resnet evaluate"]
    assert resnet20["paper_error"] == 8.75 and resnet20["params_m"] == 0.27
    assert rows["plain20"]["runs"] == 1 and rows["plain20"]["test_error_std"] is None
    assert rows["plain20"]["test_error"] == pytest.approx(errors[("plain20", 0)])
    assert rows["plain20"]["paper_error"] is None
    # The paper's rows that did not run are there with its numbers, and nothing of ours.
    assert rows["resnet110"]["runs"] == 0 and rows["resnet110"]["paper_error"] == 6.43
    assert rows["resnet110"]["paper_mean_std"] == [6.61, 0.16]
    assert [rows[m]["paper_error"] for m in ("resnet32", "resnet44", "resnet56")] == [
        7.51,
        7.17,
        6.97,
    ]
    assert rows["resnet1202"]["paper_params_m"] == 19.4
    assert not any(row["table"] == "imagenet" for row in report.rows)

    # Figures 6 and 7: real PNGs, embedded in a page that needs no other file.
    names = sorted(path.name for path in report.figures)
    assert names == ["figure6_error_curves.png", "figure7_layer_responses.png"]
    page = report.html.read_text()
    for path in report.figures:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page
    assert f"{resnet20['test_error']:.2f} ± {resnet20['test_error_std']:.2f}" in page
    assert "Left out: 1 matching run(s) that did not finish." in page  # the crashed plain56
    assert "Figure 7 is measured on 100 test images" in page
    assert "| resnet20 | A | 0.27 | 2 |" in report.markdown
    saved = json.loads((tmp_path / "report.json").read_text())
    assert sorted(saved["runs"]) == sorted(grid["runs"].values())


@pytest.mark.slow
def test_report_without_data_leaves_figure7_out_and_logs_to_the_parent(
    grid, tmp_path: Path
) -> None:
    report = build_report(grid["uri"], tmp_path, experiment=EXPERIMENT, grid=GRID)
    assert [path.name for path in report.figures] == ["figure6_error_curves.png"]
    assert "Figure 7 needs the preprocessed CIFAR-10 data" in report.html.read_text()
    log_report(report, grid["uri"], grid["parent"])
    logged = {a.path for a in MlflowClient(grid["uri"]).list_artifacts(grid["parent"], "report")}
    assert logged == {"report/report.html", "report/figure6_error_curves.png"}


@pytest.mark.slow
def test_report_command_writes_the_page_and_dvc_metrics(grid, tmp_path: Path) -> None:
    out, metrics = tmp_path / "report", tmp_path / "metrics" / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--params",
            str(PARAMS),
            "--experiment",
            EXPERIMENT,
            "--grid",
            GRID,
            "--data",
            str(grid["data"]),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
            "report.response_images=20",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Figure 7 is measured on 20 test images" in (out / "report.html").read_text()
    summary = json.loads(metrics.read_text())
    assert sorted(summary) == ["table6/plain20", "table6/resnet20"]
    assert summary["table6/resnet20"]["runs"] == 2


@pytest.mark.slow
def test_report_errors_are_one_line(grid, tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["report", "--out", str(tmp_path), *args])
        return result.exit_code, result.output.strip()

    code, output = run("--experiment", "no-such-experiment")
    assert code == 1 and output.startswith("error: no MLflow experiment 'no-such-experiment'")
    assert "\n" not in output
    code, output = run("--experiment", EXPERIMENT, "--grid", "no-such-grid")
    assert code == 1 and output.startswith(
        f"error: no finished training runs tagged grid=no-such-grid in MLflow experiment "
        f"{EXPERIMENT!r}"
    )
    code, output = run("--experiment", EXPERIMENT, "report.response_images=0")
    assert (
        code == 2 and "report.response_images: input should be greater than or equal to 1" in output
    )
    with pytest.raises(ReportError, match="no MLflow experiment"):
        build_report(grid["uri"], tmp_path, experiment="missing")
    assert not (tmp_path / "report.html").exists()


def test_layer_responses_are_the_bn_after_each_3x3_conv() -> None:
    names = [name for name, _ in response_layers(build_model("resnet20"))]
    assert len(names) == 19  # the stem and two per block: 1 + 3 * 3 * 2
    assert names[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
    assert len(response_layers(build_model("plain56"))) == 55
    bottleneck = [name for name, _ in response_layers(build_model("resnet50"))]
    assert len(bottleneck) == 16 and all(name.endswith(".bn2") for name in bottleneck)
    # Measured after the BN and before the addition: a zeroed BN gives exactly zero there.
    model = build_model("resnet20").eval()
    torch.nn.init.zeros_(model.layer1[0].bn2.weight)
    stds = response_stds(model, torch.randn(6, 3, 32, 32), batch_size=4)
    assert stds.shape == (19,) and stds[2] == 0 and (stds[[0, 1, 3]] > 0).all()


@pytest.mark.slow
def test_dvc_report_stage_runs_resnet_report_and_records_its_params(grid, tmp_path: Path) -> None:
    """``dvc repro --single-item report`` in a fresh git repository with the project's
    dvc.yaml, on the upstream stages' outputs (stand-ins) and the grid's MLflow runs."""
    repo = copy_project(tmp_path / "repo")
    changes = [f"train.experiment={EXPERIMENT}", f"report.grid={GRID}", "report.response_images=8"]
    tree = apply_overrides(read_yaml(PARAMS), changes)
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    for name in ("evaluate", "register"):
        (repo / "metrics").mkdir(exist_ok=True)
        (repo / "metrics" / f"{name}.json").write_text("{}\n")
    shutil.copytree(grid["data"], repo / "data" / "preprocessed" / "cifar10")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": grid["uri"],
    }

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    run("git", "init", "-q")
    # The params check every stage depends on (the Prefect flow runs it first the same way).
    assert "Running stage 'params'" in run(
        sys.executable, "-m", "dvc", "repro", "--single-item", "params"
    )
    first = run(sys.executable, "-m", "dvc", "repro", "--single-item", "report")
    assert "Running stage 'report'" in first
    assert (
        "Figure 7 is measured on 8 test images"
        in (repo / "reports" / "pipeline" / "report.html").read_text()
    )
    assert (
        json.loads((repo / "metrics" / "report.json").read_text())["table6/resnet20"]["runs"] == 2
    )
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["report"]
    assert set(lock["params"]["params.yaml"]) == {"report", "train.experiment"}
    assert lock["params"]["params.yaml"]["report"]["grid"] == GRID
    second = run(sys.executable, "-m", "dvc", "repro", "--single-item", "report")
    assert "Stage 'report' didn't change" in second
