"""MLflow tracking: against a real tracking server (a subprocess) and the embedded SQLite store.

The outage test kills the server mid-run, keeps training-like logging going, restarts a
server on the same store and checks that no metric value was lost.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
from mlflow import MlflowClient

from resnet_mlops.journal import MetricRecord, read_history
from resnet_mlops.lineage import DATA_VERSION_TAG, GIT_DIRTY_TAG, RUN_TAGS_ENV, env_tags, git_tags
from resnet_mlops.mlflow_store import HTTP_LIMITS, default_tracking_uri, tracking_uri
from resnet_mlops.params.base import ConfigError
from resnet_mlops.tracking import (
    RunTracker,
    TrackingError,
    replay_history,
)
from resnet_mlops.tracking.runs import TRUNCATED
from resnet_mlops.train.curves import plot_training_curves
from tests.support.mlflow_server import MlflowServer, free_port, mlflow_server, start_mlflow_server
from tests.support.model_file import assert_logged_classifier, write_model_file
from tests.support.project import REPO

COMMIT_TAG = "mlflow.source.git.commit"
KEYS = ("train_loss", "train_error", "val_error", "lr", "images_per_s")
PARAMS = {"train": {"model": "resnet20", "lr": 0.1, "milestones": [32000, 48000]}, "seed": 0}


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test inherits a tracking URI or HTTP limits, and none leaves them behind."""
    for name in ("MLFLOW_TRACKING_URI", *HTTP_LIMITS):
        monkeypatch.delenv(name, raising=False)
    yield
    assert not mlflow.is_tracking_uri_set()
    assert not set(HTTP_LIMITS) & set(os.environ)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def drawn(path: Path) -> Path:
    """Training curves as the train stage draws them (``plot_training_curves``)."""
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "train_error": 50.0, "val_error": 55.0}
    ]
    plot_training_curves(history, path, "curves")
    return path


def epoch_metrics(step: int) -> dict[str, float]:
    return {key: 1.0 / (step + 1) + index for index, key in enumerate(KEYS)}


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Fails the test, instead of stalling the suite, if a call waits on a dead server for
    good: a guard against hanging, not a speed claim (none of its tests is timed)."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("still waiting after 600 s: a hang"))
    signal.alarm(600)
    yield
    signal.alarm(0)


def warnings_from_tracking(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(("resnet_mlops.tracking", "resnet_mlops.lineage"))
        and r.levelno >= logging.WARNING
        and text in r.getMessage()
    ]


# --- No server ----------------------------------------------------------------------------


def test_env_tags_reads_a_json_object_of_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_TAGS_ENV, raising=False)
    assert env_tags() == {}
    monkeypatch.setenv(RUN_TAGS_ENV, '{"mlflow.parentRunId": "abc", "grid": "g"}')
    assert env_tags() == {"mlflow.parentRunId": "abc", "grid": "g"}
    for bad in ("{not json", '["a"]', '{"grid": 3}'):
        monkeypatch.setenv(RUN_TAGS_ENV, bad)
        with pytest.raises(ConfigError, match=RUN_TAGS_ENV):
            env_tags()


def test_default_tracking_uri_is_absolute_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri(Path("."))
    assert uri == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"
    assert uri.startswith("sqlite:////")


def test_tracking_uri_prefers_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(tmp_path) == default_tracking_uri(tmp_path)


def test_git_tags_record_commit_and_dirty_tree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_tags(repo) == {COMMIT_TAG: head, GIT_DIRTY_TAG: "false"}
    (repo / "b.py").write_text("y = 2\n")  # An untracked module changes what runs.
    assert git_tags(repo)[GIT_DIRTY_TAG] == "true"
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert git_tags(outside) == {}
    assert warnings_from_tracking(caplog, "no git commit")


def test_embedded_sqlite_store_records_the_run(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path / "project")
    (tmp_path / "project").mkdir()
    long_value = "x" * 7000
    params = {**PARAMS, "notes": long_value, "many": {f"p{i:03d}": i for i in range(150)}}
    note = tmp_path / "note.txt"
    note.write_text("hello")
    folder = tmp_path / "report"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "table.csv").write_text("a,b\n")
    with RunTracker(
        experiment="sqlite-exp",
        tracking_uri=uri,
        run_name="first",
        history_path=tmp_path / "history.jsonl",
        system_metrics=False,
    ) as tracker:
        run_id = tracker.start(params, git_tags(REPO), data_version="md5:0123")
        assert run_id is not None and tracker.active
        assert {name: os.environ[name] for name in HTTP_LIMITS} == HTTP_LIMITS
        for step in range(3):
            tracker.log_metrics(epoch_metrics(step), step)
        tracker.log_artifact(note, "notes")
        tracker.log_artifact(folder, "report")
        note.write_text("overwritten")  # The upload has its own copy.
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params["train.lr"] == "0.1"
    assert run.data.params["train.milestones"] == "[32000, 48000]"
    assert run.data.params["many.p149"] == "149"
    assert len(run.data.params) == 3 + 1 + 1 + 150  # More than one batch of 100.
    notes = run.data.params["notes"]
    assert len(notes) == 6000 and notes.endswith(TRUNCATED)
    assert run.data.tags[DATA_VERSION_TAG] == "md5:0123"
    assert run.data.tags[COMMIT_TAG] == git_tags(REPO)[COMMIT_TAG]
    assert run.data.tags[GIT_DIRTY_TAG] in ("true", "false")
    for key in KEYS:
        assert steps_of(client, run_id, key) == [0, 1, 2]
    # Artifacts live beside the database, not under the working directory's ./mlruns.
    assert run.info.artifact_uri.startswith((tmp_path / "project" / "mlartifacts").as_uri())
    full = json.loads(Path(client.download_artifacts(run_id, "params.json", tmp_path)).read_text())
    assert full["notes"] == long_value
    assert Path(client.download_artifacts(run_id, "notes/note.txt", tmp_path)).read_text() == (
        "hello"
    )
    assert [a.path for a in client.list_artifacts(run_id, "report/sub")] == ["report/sub/table.csv"]


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_context_manager_ends_the_run_with_the_outcome(
    tmp_path: Path, error: BaseException, status: str
) -> None:
    uri = default_tracking_uri(tmp_path)
    tracker = RunTracker(experiment="e", tracking_uri=uri, system_metrics=False)
    with pytest.raises(type(error)), tracker:
        run_id = tracker.start(PARAMS)
        raise error
    assert MlflowClient(uri).get_run(run_id).info.status == status


def test_resume_continues_the_same_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = default_tracking_uri(tmp_path)
    history = tmp_path / "history.jsonl"
    common = {"experiment": "e", "tracking_uri": uri, "history_path": history}
    first = RunTracker(**common, system_metrics=False)
    with pytest.raises(KeyboardInterrupt), first:
        run_id = first.start(PARAMS)
        for step in range(3):
            first.log_metrics(epoch_metrics(step), step)
        raise KeyboardInterrupt
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"

    changed = {**PARAMS, "seed": 1}
    with RunTracker(**common, run_id=run_id, system_metrics=False) as second:
        assert second.start(changed) == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        assert [r.step for r in read_history(history)[0]] == [0, 1, 2]  # The journal goes on.
        for step in range(3, 5):
            second.log_metrics(epoch_metrics(step), step)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "0"  # MLflow params are immutable...
    assert warnings_from_tracking(caplog, "seed: '0' -> '1'")  # ...so the change is reported.
    assert steps_of(client, run_id, "train_loss") == [0, 1, 2, 3, 4]
    records, end = read_history(history)
    assert [r.step for r in records] == [0, 1, 2, 3, 4]
    assert {r.run_id for r in records} == {run_id} and end.status == "FINISHED"


@pytest.mark.usefixtures("hang_guard")
def test_server_down_at_start_continues_without_tracking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    history = tmp_path / "history.jsonl"
    with RunTracker(experiment="e", tracking_uri=uri, history_path=history) as tracker:
        assert tracker.start(PARAMS) is None
        assert not tracker.active
        # One short attempt per call, not MLflow's minutes of retries: its limits are set.
        assert {name: os.environ[name] for name in HTTP_LIMITS} == HTTP_LIMITS
        for step in range(3):
            tracker.log_metrics(epoch_metrics(step), step)
        tracker.log_artifact(drawn(tmp_path / "curves.png"), "plots")
    assert warnings_from_tracking(caplog, f"MLflow tracking at {uri} is unavailable")
    assert warnings_from_tracking(caplog, "resnet sync --history")
    assert [r.step for r in read_history(history)[0]] == [0, 1, 2]
    assert (tmp_path / "curves.png").stat().st_size > 0

    # A resumed run keeps its id while the server is down, for the checkpoint and a replay.
    resumed = RunTracker(experiment="e", tracking_uri=uri, run_id="0123abcd", history_path=history)
    with resumed:
        assert resumed.start(PARAMS) == "0123abcd" and not resumed.active
        resumed.log_metrics(epoch_metrics(3), 3)
    assert [(r.step, r.run_id) for r in read_history(history)[0]][-1] == (3, "0123abcd")

    required = RunTracker(experiment="e", tracking_uri=uri, required=True)
    with pytest.raises(TrackingError, match="unavailable"):
        required.start(PARAMS)


def test_replay_sends_a_history_once(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    history = tmp_path / "history.jsonl"
    with RunTracker(
        experiment="e", tracking_uri=uri, history_path=history, system_metrics=False
    ) as tracker:
        run_id = tracker.start(PARAMS)
        for step in range(4):
            tracker.log_metrics(epoch_metrics(step), step)
    client = MlflowClient(uri)
    # Everything already arrived: replaying stores nothing twice.
    assert replay_history(history, tracking_uri=uri).metrics == 4 * len(KEYS)
    assert steps_of(client, run_id, "lr") == [0, 1, 2, 3]
    # To another run (e.g. when the server was down from the start).
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    replay_history(history, other, tracking_uri=uri)
    assert steps_of(client, other, "lr") == [0, 1, 2, 3]
    assert client.get_run(other).info.status == "FINISHED"  # The recorded end, applied.


def test_read_history_skips_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    good = json.dumps({"step": 0, "timestamp": 1, "metrics": {"a": 1.0}, "run_id": None})
    path.write_text(f"{good}\n{good[:20]}")  # Killed mid-write.
    records, end = read_history(path)
    assert records == [MetricRecord(step=0, timestamp=1, metrics={"a": 1.0})] and end is None
    path.write_text(f"{good[:20]}\n{good}\n")
    with pytest.raises(ValueError, match=r"history.jsonl:1"):
        read_history(path)


def test_run_lands_on_the_server(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    model_file = write_model_file(tmp_path / "model.pt")
    with RunTracker(
        experiment="server-exp", tracking_uri=server.uri, history_path=tmp_path / "h.jsonl"
    ) as tracker:
        run_id = tracker.start(PARAMS, {"team": "vision"}, data_version="md5:feed")
        time.sleep(1.5)  # an epoch's time: three system-metric samples, were the monitor on
        for step in range(5):
            tracker.log_metrics(epoch_metrics(step), step)
        tracker.log_artifact(drawn(tmp_path / "curves.png"), "plots")
        model_uri = tracker.log_model(model_file)
    assert model_uri is not None and model_uri.startswith("models:/")
    assert not (tmp_path / "mlflow-pending").exists()  # staged there, removed once sent
    assert not tracker.active
    left = {t.name for t in threading.enumerate()} & {"mlflow-uploader", "SystemMetricsMonitor"}
    assert not left

    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model"] == "resnet20"
    assert run.data.tags["team"] == "vision" and run.data.tags[DATA_VERSION_TAG] == "md5:feed"
    for key in KEYS:
        assert steps_of(client, run_id, key) == [0, 1, 2, 3, 4]
    assert any(key.startswith("system/cpu") for key in run.data.metrics)
    # MLflow lists metrics in the order first stored, and its compare view defaults to the
    # first: the system metrics start after the first batch of the run's own.
    assert list(run.data.metrics)[: len(KEYS)] == list(KEYS)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"params.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/curves.png"]
    assert model_uri.removeprefix("models:/") in {o.model_id for o in run.outputs.model_outputs}
    # The run's one logged model is the classifier users register and serve.
    assert assert_logged_classifier(server.uri, run_id, model_file) == model_uri


@pytest.mark.slow
@pytest.mark.usefixtures("hang_guard")
def test_outage_mid_run_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    store = tmp_path / "store"
    server = start_mlflow_server(store)
    history = tmp_path / "history.jsonl"
    monkeypatch.setattr(RunTracker, "flush_timeout_s", 3.0)
    tracker = RunTracker(experiment="outage", tracking_uri=server.uri, history_path=history)
    client = MlflowClient(server.uri)
    try:
        run_id = tracker.start(PARAMS)
        for step in range(3):
            tracker.log_metrics(epoch_metrics(step), step)
        wait_until(lambda: steps_of(client, run_id, "train_loss") == [0, 1, 2])

        server.kill()
        for step in range(3, 6):
            tracker.log_metrics(epoch_metrics(step), step)  # queued: no wait on the dead server
            time.sleep(0.3)
        # The server comes back: values logged from now on arrive. The ones MLflow's async
        # queue could not send it dropped (mlflow 3.x logs an error and never retries): this
        # gap, pinned here to the installed MLflow, is why the journal and `resnet sync` exist.
        server = start_mlflow_server(store, port=server.port)
        for step in range(6, 8):
            tracker.log_metrics(epoch_metrics(step), step)
        wait_until(lambda: steps_of(client, run_id, "val_error") == [0, 1, 2, 6, 7])

        # Down again, and still down at the end: finish gives up in bounded time.
        server.kill()
        for step in range(8, 10):
            tracker.log_metrics(epoch_metrics(step), step)
        model_file = write_model_file(tmp_path / "model.pt")
        assert tracker.log_model(model_file) is None
        assert warnings_from_tracking(caplog, "could not log model 'classifier'")
        tracker.finish()  # returns (a hang would trip the guard), without the server
        assert warnings_from_tracking(caplog, "resnet sync --history")

        records, end = read_history(history)  # The history has every value.
        assert [r.step for r in records] == list(range(10)) and end.status == "FINISHED"

        server = start_mlflow_server(store, port=server.port)
        assert client.get_run(run_id).info.status == "RUNNING"  # The end never arrived...
        replay_history(history, run_id, tracking_uri=server.uri)
        for key in KEYS:
            assert steps_of(client, run_id, key) == list(range(10))  # ...each value once.
        assert client.get_run(run_id).info.status == "FINISHED"
        assert_logged_classifier(server.uri, run_id, model_file)  # from mlflow-pending/
    finally:
        tracker.finish()
        server.stop()
