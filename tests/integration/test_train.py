"""Training and evaluation on small real data: the recipe, resuming, bad input, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.params.base import load_sections
from resnet_mlops.params.train import OptimizerParams, ScheduleParams, TrainParams
from resnet_mlops.stages.evaluate import EvalPaths, run_evaluation
from resnet_mlops.stages.train import run_training
from resnet_mlops.train.schedule import learning_rate, warmup_iterations
from tests.support.model_file import assert_logged_classifier
from tests.support.project import PARAMS

# The real params.yaml, shrunk: a few dozen iterations of ResNet-20 on the small data.
SMALL = [
    "train.batch_size=32",
    "train.schedule.length=40",
    "train.schedule.milestones=[30]",
    "train.log_every=5",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]


def paper_schedule() -> tuple[OptimizerParams, ScheduleParams]:
    _, sections, _ = load_sections(PARAMS, {"train": TrainParams})
    return sections["train"].optimizer, sections["train"].schedule


def lr(iteration: int, warmup: int = 0, **schedule_changes) -> float:
    optimizer, schedule = paper_schedule()
    schedule = ScheduleParams(**{**schedule.__dict__, **schedule_changes})
    return learning_rate(
        iteration, optimizer=optimizer, schedule=schedule, warmup=warmup, iterations_per_epoch=352
    )


def test_paper_cifar_schedule_is_a_pure_function_of_the_iteration() -> None:
    assert [lr(i) for i in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_resnet110_warms_up_at_0_01_then_goes_back_to_0_1() -> None:
    _, schedule = paper_schedule()
    warmup = warmup_iterations(schedule, "resnet110", 352)
    assert warmup == 400 and warmup_iterations(schedule, "resnet20", 352) == 0
    assert lr(0, warmup) == lr(399, warmup) == pytest.approx(0.01)
    assert lr(400, warmup) == pytest.approx(0.1)  # not left at 0.01
    assert lr(32_000, warmup) == pytest.approx(0.01)


def test_epoch_schedule_and_linear_warmup() -> None:
    changes = {"unit": "epochs", "milestones": (30, 60), "warmup_mode": "linear"}
    assert lr(30 * 352 - 1, **changes) == pytest.approx(0.1)
    assert lr(30 * 352, **changes) == pytest.approx(0.01)
    assert lr(0, warmup=10, **changes) == pytest.approx(0.01)
    assert lr(9, warmup=10, **changes) == pytest.approx(0.1)


def train_small(tmp: Path, data: Path, *extra: str, resume: bool = False):
    return run_training(
        PARAMS,
        [*SMALL, *extra],
        data,
        tmp / "models",
        tmp / "metrics.json",
        tmp / "history.json",
        resume,
    )


@pytest.mark.slow
def test_train_then_evaluate_writes_self_describing_outputs(tmp_path: Path, small_cifar: Path):
    result = train_small(tmp_path, small_cifar)
    assert result.iterations == 40
    history = json.loads((tmp_path / "history.json").read_text())
    # 400 training images: 13 batches of 32 per epoch (the last one partial).
    assert [r["iteration"] for r in history] == [13.0, 26.0, 39.0, 40.0]
    assert history[-1]["lr"] == pytest.approx(0.01)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == history[-1]

    model, meta = load_model(tmp_path / "models" / "model.pt")
    assert meta["model"] == "resnet20" and meta["parameters"] == 269_722
    assert meta["preprocessing"]["classes"][0] == "airplane"
    assert meta["preprocessing"]["mean_image"].shape == (32, 32, 3)
    assert meta["config"]["train"]["batch_size"] == 32
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)

    # The run is in MLflow: the config, per-epoch metrics, curves, provenance and the model.
    run = MlflowClient().get_run(meta["provenance"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model"] == "resnet20"
    assert run.data.tags["data.version"] == meta["provenance"]["data_version"]
    assert "mlflow.source.git.commit" in run.data.tags
    val_errors = MlflowClient().get_metric_history(run.info.run_id, "val_error")
    assert [m.step for m in val_errors] == [1, 2, 3, 4]
    assert val_errors[-1].value == pytest.approx(history[-1]["val_error"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/training_curves.png" in artifacts
    # Its one logged model: the classifier, holding this model.pt.
    model_file = tmp_path / "models" / "model.pt"
    assert_logged_classifier(mlflow.get_tracking_uri(), run.info.run_id, model_file)

    paths = EvalPaths(tmp_path / "eval.json", tmp_path / "confusion.csv", tmp_path / "cm.png")
    metrics = run_evaluation(PARAMS, [], tmp_path / "models" / "model.pt", small_cifar, paths)
    assert metrics["samples"] == 100 and 0 <= metrics["test_top1_error"] <= 100
    assert len(metrics["per_class_accuracy"]) == 10
    rows = paths.confusion_csv.read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 101
    assert paths.confusion_png.read_bytes()[:4] == b"\x89PNG"
    run = MlflowClient().get_run(run.info.run_id)  # evaluate added to the training run
    assert run.data.metrics["test_top1_error"] == pytest.approx(metrics["test_top1_error"])
    assert run.info.status == "FINISHED"
    evaluation = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert evaluation == {"evaluation/eval.json", "evaluation/cm.png"}


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 600) -> str:
    seen = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        seen += line
        if text in line:
            return seen
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"never saw {text!r}; output:\n{seen}")


@pytest.mark.slow
def test_sigterm_saves_and_resume_ends_with_the_same_weights(tmp_path: Path, small_cifar: Path):
    deterministic = ["train.deterministic=true", "train.precision=fp32", "loader.backend=torch"]
    train_small(tmp_path / "straight", small_cifar, *deterministic)
    expected = torch.load(tmp_path / "straight" / "models" / "model.pt", weights_only=True)

    out = tmp_path / "interrupted"
    command = [
        sys.executable,
        "-m",
        "resnet_mlops.cli",
        "train",
        "--params",
        str(PARAMS),
        "--data",
        str(small_cifar),
        "--out",
        str(out / "models"),
        "--metrics",
        str(out / "metrics.json"),
        "--history",
        str(out / "history.json"),
        *SMALL,
        *deterministic,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    _wait_for(process, "it 20/40")  # in the second epoch
    # To the whole process group, DataLoader workers too, as docker stop or a scheduler does.
    os.killpg(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 143, output
    assert "checkpoint saved" in output
    assert not (out / "models" / "model.pt").exists()
    stopped = torch.load(out / "models" / "checkpoint.pt", weights_only=True)
    assert 20 <= stopped["train_state"]["iteration"] < 40
    run_id = stopped["train_state"]["run_id"]
    assert MlflowClient().get_run(run_id).info.status == "KILLED"  # not left RUNNING

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    final = torch.load(out / "models" / "model.pt", weights_only=True)
    assert final["provenance"]["mlflow_run_id"] == run_id  # the same run, reopened, ended
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=key)
    timeless = [
        {k: v for k, v in record.items() if k != "images_per_second"}
        for record in json.loads((out / "history.json").read_text())
    ]
    assert timeless == [
        {k: v for k, v in record.items() if k != "images_per_second"}
        for record in json.loads((tmp_path / "straight" / "history.json").read_text())
    ]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["resnet", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow  # two CLI runs; tests/unit/test_params.py checks the same messages in process
def test_bad_model_and_param_type_are_one_line_errors(tmp_path: Path) -> None:
    result = run_cli("train", "--params", str(PARAMS), "train.model=resnet21", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {PARAMS}: train.model: unknown model 'resnet21'")
    result = run_cli("train", "--params", str(PARAMS), "train.batch_size=big", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {PARAMS}: train.batch_size: expected an integer, got 'big'"
    )


@pytest.mark.slow  # runs the console script (several seconds)
def test_bad_run_tags_are_a_one_line_error_and_keep_the_checkpoint(tmp_path: Path) -> None:
    """A bad RESNET_RUN_TAGS stops `resnet train` before a fresh start voids the checkpoint."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    result = subprocess.run(
        ["resnet", "train", "--params", str(PARAMS), "--out", str(models)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "RESNET_RUN_TAGS": "{not json"},
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: RESNET_RUN_TAGS: not JSON")
    assert (models / "checkpoint.pt").read_bytes() == b"an earlier run's checkpoint"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint.pt"]


def _errors(stderr: str) -> list[str]:
    """stderr without its warnings (here: tmp_path is no git repository, which is said)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("WARNING: ")]


@pytest.mark.slow  # runs the console script (several seconds)
def test_resume_problems_are_one_line_errors_and_overwrite_nothing(
    tmp_path: Path, small_cifar: Path
) -> None:
    models = tmp_path / "models"
    common = [
        "train",
        "--params",
        str(PARAMS),
        "--data",
        str(small_cifar),
        "--out",
        str(models),
        "--metrics",
        str(tmp_path / "m.json"),
        "--history",
        str(tmp_path / "h.json"),
        "--resume",
        *SMALL,
    ]
    result = run_cli(*common, cwd=tmp_path)
    assert result.returncode == 1
    assert _errors(result.stderr) == [f"error: {models}/checkpoint.pt: no such checkpoint"]

    models.mkdir(exist_ok=True)  # the failed run above may have made it, to lock it
    (models / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    result = run_cli(*common, cwd=tmp_path)
    assert result.returncode == 1
    (line,) = _errors(result.stderr)
    assert line.startswith(f"error: {models}/checkpoint.pt: corrupt or not a checkpoint")
    assert (models / "checkpoint.pt").read_bytes() == b"\x80\x02garbage"

    from resnet_mlops.engine.checkpoint import save_checkpoint

    save_checkpoint(models / "checkpoint.pt", {"model": "resnet56"})
    before = (models / "checkpoint.pt").read_bytes()
    result = run_cli(*common, cwd=tmp_path)
    assert result.returncode == 1
    assert _errors(result.stderr) == [
        f"error: {models}/checkpoint.pt: holds 'resnet56', not 'resnet20'"
    ]
    assert (models / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_with_gloo(tmp_path: Path, small_cifar: Path) -> None:
    # The launch path of the image and the Prefect flows: `resnet train` with torchrun's
    # PET_NPROC_PER_NODE re-runs itself under torch.distributed.run (--standalone, gloo).
    resnet = shutil.which("resnet", path=str(Path(sys.executable).parent))
    assert resnet is not None
    result = subprocess.run(
        [
            resnet,
            "train",
            "--params",
            str(PARAMS),
            "--data",
            str(small_cifar),
            "--out",
            str(tmp_path / "models"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--history",
            str(tmp_path / "h.json"),
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PET_NPROC_PER_NODE": "2"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    history = json.loads((tmp_path / "h.json").read_text())
    # Global batch 32 as 2 x 16 over 2 disjoint halves: 13 iterations per epoch, as one process.
    assert [r["iteration"] for r in history] == [13.0, 26.0, 39.0, 40.0]
    assert history[-1]["val_error"] <= 100
    # Only rank 0 printed progress.
    assert result.stdout.count("epoch 1/4: train loss") == 1
    _, meta = load_model(tmp_path / "models" / "model.pt")
    assert meta["model"] == "resnet20"


def test_ten_crop_evaluation_averages_the_softmax_over_crops() -> None:
    from resnet_mlops.engine.metrics import evaluate_model
    from resnet_mlops.engine.runtime import Runtime

    class CropScores(torch.nn.Module):
        """Logits read off the input: crop k of image i votes for class (i + k) % 3."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3, 0, 0] * 10

    images = torch.zeros(2, 10, 3, 4, 4)
    for i in range(2):
        for k in range(10):
            images[i, k, (i + (k >= 7)) % 3] = 1.0  # 7 crops say class i, 3 say class i+1
    runtime = Runtime(torch.device("cpu"), 0, 1, 0)
    result = evaluate_model(
        CropScores(), [(images, torch.tensor([0, 2]))], num_classes=3, runtime=runtime, dtype=None
    )
    assert result.samples == 2
    assert result.top1_error == pytest.approx(0.5)  # image 0 right; image 1 (class 1) wrong
    assert result.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
