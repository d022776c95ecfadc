"""After an outage nothing tracked is missing, and what the server missed is said on stderr.

A run whose server was down is kept beside its journal (``models/mlflow-pending/``) and sent
by ``resnet sync``: the run itself, params, metrics, plots and the model. Staging never leaves
folders in /tmp after a kill. Warnings reach stderr although ``import mlflow.pytorch``
mutes the root logger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
from mlflow import MlflowClient

from resnet_mlops.journal import PENDING_DIR, RunStart, Upload, read_history, read_journal
from resnet_mlops.mlflow_store import HTTP_LIMITS, default_tracking_uri
from resnet_mlops.tracking import RunTracker, replay_history
from resnet_mlops.train.curves import plot_training_curves
from tests.support.mlflow_server import free_port, mlflow_server
from tests.support.model_file import assert_logged_classifier, write_model_file
from tests.support.project import PARAMS

CONFIG = {"train": {"model": "resnet20", "lr": 0.1}, "seed": 0}


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("MLFLOW_TRACKING_URI", *HTTP_LIMITS):
        monkeypatch.delenv(name, raising=False)
    yield
    assert not mlflow.is_tracking_uri_set()


def drawn(path: Path) -> Path:
    """Training curves as the train stage draws them (``plot_training_curves``)."""
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "train_error": 50.0, "val_error": 55.0}
    ]
    plot_training_curves(history, path, "curves")
    return path


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound and closed: nothing listens


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@pytest.mark.slow  # two torch.export passes of ResNet-20 (saved, then loaded to check)
def test_a_run_the_server_never_saw_is_sent_whole_by_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = tmp_path / "models" / "mlflow-history.jsonl"
    plots = tmp_path / "report"
    (plots / "sub").mkdir(parents=True)
    (plots / "sub" / "table.csv").write_text("a,b\n")
    model_file = write_model_file(tmp_path / "model.pt")
    uri = dead_uri()
    common = {"experiment": "down", "tracking_uri": uri, "history_path": history}
    first = RunTracker(**common, run_name="r20", system_metrics=False)
    with pytest.raises(KeyboardInterrupt), first:  # SIGTERM'd while the server is down...
        assert first.start(CONFIG, {"team": "vision"}, data_version="md5:1") is None
        first.log_metrics({"train_loss": 2.0}, 0)
        raise KeyboardInterrupt
    # ...and resumed while it is still down: the run has no id yet, the journal must stay.
    with RunTracker(**common, run_name="r20", system_metrics=False, resumed=True) as second:
        assert second.start(CONFIG, {"team": "vision"}, data_version="md5:1") is None
        second.log_metrics({"train_loss": 1.0}, 1)
        second.log_artifact(drawn(tmp_path / "curves.png"), "plots")
        second.log_artifact(plots, "report")
        assert second.log_model(model_file) is None
    said = " ".join(record.getMessage() for record in caplog.records)
    assert f"MLflow tracking at {uri} is unavailable" in said
    assert "model 'classifier'" in said and "plots/curves.png" in said and "report/" in said
    assert f"resnet sync --history {history}" in said
    pending = history.parent / PENDING_DIR
    kept = [r for r in read_journal(history) if isinstance(r, Upload)]
    assert len(kept) == 2 + 3 and all((history.parent / r.folder).is_dir() for r in kept)
    assert [r.step for r in read_history(history)[0]] == [0, 1]

    # The server is back (here the embedded store): the whole run arrives, once.
    store = default_tracking_uri(tmp_path)
    sent = replay_history(history, tracking_uri=store)
    assert (sent.metrics, sent.uploads, sent.models) == (2, 4, 1)
    client = MlflowClient(store)
    (run,) = runs_of(client, "down")
    run_id = run.info.run_id
    assert sent.run_ids == (run_id,) and run.info.status == "FINISHED"
    assert run.info.run_name == "r20" and run.data.params["train.lr"] == "0.1"
    assert run.data.tags["team"] == "vision" and run.data.tags["data.version"] == "md5:1"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"params.json", "plots", "report"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "report/sub")] == ["report/sub/table.csv"]
    (output,) = run.outputs.model_outputs
    assert assert_logged_classifier(store, run_id, model_file) == f"models:/{output.model_id}"
    assert not pending.exists()  # each folder removed once sent; the empty parent too
    assert {r.run_id for r in read_journal(history)} == {run_id}

    again = replay_history(history, tracking_uri=store)
    assert (again.run_ids, again.uploads, again.models) == ((run_id,), 0, 0)
    assert len(runs_of(client, "down")) == 1
    assert len(client.get_metric_history(run_id, "train_loss")) == 2
    assert len(client.get_run(run_id).outputs.model_outputs) == 1


def test_a_new_run_keeps_aside_a_journal_the_server_never_got(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = tmp_path / "mlflow-history.jsonl"
    common = {"experiment": "e", "tracking_uri": dead_uri(), "history_path": history}
    for value in (1.0, 2.0):  # two fresh runs, neither sent
        with RunTracker(**common, system_metrics=False) as tracker:
            tracker.start(CONFIG)
            tracker.log_metrics({"loss": value}, 0)
    (kept,) = tmp_path.glob("mlflow-history.*.jsonl")
    assert [r.metrics for r in read_history(kept)[0]] == [{"loss": 1.0}]
    assert [r.metrics for r in read_history(history)[0]] == [{"loss": 2.0}]
    assert any(f"kept as {kept}" in r.getMessage() for r in caplog.records)


def test_replay_without_a_run_start_names_the_journal(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text(json.dumps({"step": 0, "timestamp": 1, "metrics": {"a": 1.0}}) + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl: records without a run id"):
        replay_history(history, tracking_uri=default_tracking_uri(tmp_path))
    (tmp_path / "precious").mkdir()
    history.write_text(json.dumps({"folder": "precious", "run_id": "0123"}) + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl: 'precious' is not in mlflow-pending/"):
        replay_history(history, tracking_uri=default_tracking_uri(tmp_path))
    assert (tmp_path / "precious").is_dir() and not (tmp_path / "mlflow.db").exists()
    history.write_text('{"neither": 1}\n{"step": 0, "timestamp": 1, "metrics": {}}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:1: not a journal record"):
        read_journal(history)


@pytest.mark.slow  # a tracked subprocess, killed mid-run
def test_a_killed_run_leaves_its_uploads_for_sync_and_nothing_in_tmp(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    store = default_tracking_uri(tmp_path)
    history = tmp_path / "models" / "mlflow-history.jsonl"
    (tmp_path / "curves.png").write_bytes(b"png")
    script = f"""
import os, signal
from pathlib import Path
from resnet_mlops.tracking import RunTracker
t = RunTracker(experiment="killed", tracking_uri={store!r}, history_path=Path({str(history)!r}),
               system_metrics=False)
t.start({{"seed": 0}})
t.log_metrics({{"loss": 1.0}}, 0)
t.log_artifact(Path({str(tmp_path / "curves.png")!r}), "plots")
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "TMPDIR": str(tmp)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(tmp.iterdir()) == []  # sent at once: nothing staged in a temporary folder
    sent = replay_history(history, tracking_uri=store)
    client = MlflowClient(store)
    (run_id,) = sent.run_ids
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: no end recorded
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/curves.png"]
    assert not (history.parent / PENDING_DIR).exists()


@pytest.mark.slow  # a subprocess importing MLflow and torch
def test_warnings_reach_stderr_after_mlflow_pytorch_mutes_the_root_logger() -> None:
    script = """
import logging, warnings
from resnet_mlops.cli import configure_logging
configure_logging()
import mlflow.pytorch  # calls logging.basicConfig(level=ERROR)
logging.getLogger("resnet_mlops.tracking.tracker").warning("tracking is unreachable")
logging.getLogger("resnet_mlops.tracking.uploader").info("answers again")
warnings.warn("a python warning", UserWarning)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "WARNING: tracking is unreachable" in result.stderr
    assert "INFO: answers again" in result.stderr
    assert "UserWarning: a python warning" in result.stderr


@pytest.mark.slow
def test_train_against_a_dead_server_warns_and_sync_sends_the_whole_run(
    tmp_path: Path, small_cifar: Path
) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "models"
    history = out / "mlflow-history.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    train = [
        *(sys.executable, "-m", "resnet_mlops.cli", "train", "--params", str(PARAMS)),
        *("--data", str(small_cifar), "--out", str(out)),
        *("--metrics", str(tmp_path / "train.json"), "--history", str(tmp_path / "h.json")),
        *("train.batch_size=32", "train.schedule.length=3", "train.schedule.milestones=[]"),
        "train.checkpoint_every=0",
        "loader.num_threads=1",
    ]
    trained = subprocess.run(train, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr  # training itself succeeds
    assert f"MLflow tracking at {uri} is unavailable: connection refused" in trained.stderr
    assert "model 'classifier'" in trained.stderr and "plots/training_curves.png" in trained.stderr
    assert f"resnet sync --history {history}" in trained.stderr

    with mlflow_server(tmp_path / "store", port=port) as server:
        sync = [sys.executable, "-m", "resnet_mlops.cli", "sync", "--history", str(history)]
        for _ in range(2):  # the second sends nothing new
            synced = subprocess.run(sync, env=env, capture_output=True, text=True, cwd=tmp_path)
            assert synced.returncode == 0, synced.stderr
        client = MlflowClient(server.uri)
        (run,) = runs_of(client, "resnet-cifar10")
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["train.model"] == "resnet20"
        assert run.data.params["train.schedule.length"] == "3"
        assert [m.step for m in client.get_metric_history(run_id, "val_error")] == [1]
        assert {"params.json", "plots"} <= {a.path for a in client.list_artifacts(run_id)}
        assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
            "plots/training_curves.png",
            "plots/h.json",
        }
        (output,) = run.outputs.model_outputs
        model_uri = assert_logged_classifier(server.uri, run_id, out / "model.pt")
        assert model_uri == f"models:/{output.model_id}"
    assert not (out / PENDING_DIR).exists()
    assert f"sent to run {run_id}" in synced.stdout
    assert isinstance(read_journal(history)[0], RunStart)
