"""The Prefect flows with the real tools: a ``prefect server`` and a process worker on
127.0.0.1, deployments from ``prefect.yaml``, ``dvc repro`` of each stage in a temporary git
repository on a small CIFAR-10 subset, and a real MLflow server.

Covers a deployment run to Completed (per-stage task runs, artifacts, the MLflow run, dvc.lock
and the DVC cache) and every lineage link it leaves, a workspace outside the deployment's folder
and a bad parameter failing before any stage, and the grid flow's parent and child runs with a
preempted train stage retried and resuming its checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from pipelines.dag import pipeline_stages
from pipelines.workspace import WORKSPACES_ENV
from resnet_mlops.params.base import apply_overrides, read_yaml
from tests.support.kube_api import condition, kube_api
from tests.support.mlflow_server import MlflowServer, free_port, start_mlflow_server
from tests.support.project import (
    GIT_IDENTITY,
    PARAMS,
    PROJECT_FILES,
    REPO,
    SHRINK,
    class_folders,
    copy_project,
)

pytestmark = pytest.mark.slow

STAGES = ["params", "prepare", "preprocess", "train", "evaluate", "register", "report"]
POOL = "resnet-process"  # prefect.yaml's work pool
STARTUP_TIMEOUT_S = 240.0  # a Prefect server takes 30-60 s to start on 2 busy cores
RUN_TIMEOUT_S = 900.0


@dataclass
class Stack:
    """The running servers, the worker and the workspace they share."""

    workspace: Path
    api_url: str
    env: dict[str, str]  # for Prefect CLI calls and the worker
    mlflow: MlflowServer


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (server or worker and its children), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    """``python -m prefect ...``; its output, or a failed assertion."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{output[-4000:]}"
    return output


def make_workspace(root: Path) -> Path:
    """A git repository with the project's pipeline, flows and prefect.yaml, and params shrunk
    to a small class-folder subset of the CIFAR-10 mirror (as in test_dvc_pipeline)."""
    source = class_folders(root / "cifar-subset", {"train": 20, "test": 10})
    repo = copy_project(root / "repo", (*PROJECT_FILES, "prefect.yaml"), packages=("pipelines",))
    tree = apply_overrides(read_yaml(PARAMS), [f"prepare.cifar10.source={source}", *SHRINK])
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    env = {**os.environ, **GIT_IDENTITY}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    return repo


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """MLflow and Prefect servers, a process worker on prefect.yaml's pool, the workspace;
    this test process's Prefect client points at the server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    tmp = tmp_path_factory.mktemp("prefect")
    workspace = make_workspace(tmp)
    mlflow = start_mlflow_server(tmp / "mlflow")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "MLFLOW_TRACKING_URI": mlflow.uri,
        "DVC_NO_ANALYTICS": "1",
    }
    # The worker's flow runs may use the deployment's folder only (not a developer's setting).
    env.pop(WORKSPACES_ENV, None)
    processes: list[subprocess.Popen] = []
    try:
        server = _start(
            [sys.executable, "-m", "prefect", "server", "start"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env,
            tmp / "server.log",
            tmp,
        )
        processes.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(f"{api_url}/health"):
            log = (tmp / "server.log").read_text(errors="replace")[-3000:]
            assert server.poll() is None, f"prefect server exited:\n{log}"
            assert time.monotonic() < deadline, f"prefect server did not start:\n{log}"
            time.sleep(1)
        cli("work-pool", "create", POOL, "--type", "process", env=env, cwd=workspace)
        worker = _start(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
            env,
            tmp / "worker.log",
            workspace,
        )
        processes.append(worker)
        with temporary_settings({PREFECT_API_URL: api_url, PREFECT_HOME: tmp / "prefect-home"}):
            yield Stack(workspace=workspace, api_url=api_url, env=env, mlflow=mlflow)
    finally:
        for process in reversed(processes):
            _stop(process)
        mlflow.stop()


@pytest.fixture
def stage_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows run in this process hand the stages the test's MLflow server and git identity,
    and may use the workspace (this process runs elsewhere: the operator's variable allows it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow.uri)
    monkeypatch.setenv(WORKSPACES_ENV, str(stack.workspace))
    for name, value in GIT_IDENTITY.items():
        monkeypatch.setenv(name, value)


def task_runs(flow_run_id: Any) -> list[Any]:
    """The flow run's task runs, in the order they started."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(runs, key=lambda run: run.start_time or run.expected_start_time)


def artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's artifacts by key."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def wait_for_final_state(flow_run_id: str) -> Any:
    from prefect import get_client

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run still {run.state}"
            time.sleep(3)


def dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def experiment_names(workspace: Path) -> set[str]:
    shown = json.loads(dvc("exp", "show", "--json", cwd=workspace))
    return {
        exp["name"] for rev in shown for group in rev.get("experiments") or [] for exp in [group]
    }


def test_a_deployment_from_prefect_yaml_runs_every_stage_on_a_worker(stack: Stack) -> None:
    from prefect import get_client

    workspace = stack.workspace
    cli("deploy", "--all", "--no-prompt", env=stack.env, cwd=workspace)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("resnet-pipeline/cifar10-resnet20")
        nightly = client.read_deployment_by_name("resnet-pipeline/cifar10-nightly-retrain")
        grid = client.read_deployment_by_name("resnet-grid/cifar10-paper-grid")
        client.read_deployment_by_name("resnet-pipeline/imagenet-resnet50")
    assert deployment.work_pool_name == POOL and grid.parameters["grid"] == "paper-cifar10"
    # The flow runs in the folder it was deployed from, the workspace.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(workspace)}}
    ]
    assert [s.active for s in nightly.schedules] == [False]

    params = (workspace / "params.yaml").read_bytes()
    output = cli(
        "deployment",
        "run",
        "resnet-pipeline/cifar10-resnet20",
        "--param",
        "model=plain20",
        # As the README and docs/prefect.md show: a JSON list of key=value strings.
        "--param",
        'overrides=["train.schedule.length=20", "train.schedule.milestones=[10]"]',
        env=stack.env,
        cwd=workspace,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)[1]
    run = wait_for_final_state(flow_run_id)
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"

    # One task per dvc.yaml stage (the params check first), in DVC's order.
    stages = pipeline_stages(workspace)
    assert stages[: len(STAGES)] == STAGES
    tasks = task_runs(run.id)
    assert [t.name for t in tasks] == [*stages, "record-experiment"]
    assert all(t.state.is_completed() for t in tasks)
    assert len({t.task_key for t in tasks}) == len(tasks)  # each stage its own task
    # The run's parameters were for that run only: params.yaml is as it was, byte for byte.
    assert (workspace / "params.yaml").read_bytes() == params

    # DVC versioned the run: dvc.lock records the parameter, the outputs are in the cache,
    # and the run is a DVC experiment.
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(stages)
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["model"] == "plain20"
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["schedule"]["length"] == 20
    model_out = next(o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt")
    cached = workspace / ".dvc" / "cache" / "files" / "md5" / model_out["md5"][:2]
    assert (cached / model_out["md5"][2:]).is_file()
    assert f"prefect-{run.name}" in experiment_names(workspace)

    # The MLflow run exists on the server, and the artifacts link to it.
    decision = json.loads((workspace / "metrics" / "register.json").read_text())
    client = MlflowClient(stack.mlflow.uri)
    (train_run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.model = 'plain20'"
    )
    assert train_run.data.metrics["test_top1_error"] >= 0
    # The deployment's own parameters (dataset) and the run's, as the flow applied them.
    assert json.loads(train_run.data.tags["overrides"])[-3:] == [
        "train.model=plain20",
        "train.schedule.length=20",
        "train.schedule.milestones=[10]",
    ]
    found = artifacts(run.id)
    summary = found["cifar10-plain20-summary"]
    link = (
        f"{stack.mlflow.uri}/#/experiments/{train_run.info.experiment_id}"
        f"/runs/{train_run.info.run_id}"
    )
    assert summary.type == "markdown" and link in summary.data
    assert f"version {decision['version']}" in summary.data and "champion" in summary.data
    table = found["cifar10-plain20-metrics"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {"stage": "evaluate", "metric": "test_top1_error"}.items() <= rows[0].items()
    check_lineage(stack, run, train_run, decision, tasks)


def git_head(workspace: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, check=True
    ).stdout.strip()


def stage_logs(task_run: Any) -> list[str]:
    """The messages a task run logged (its stage's output), oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    log_filter = LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run.id]))
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter, limit=200, offset=len(messages)):
            messages += [log.message for log in page]
    return messages


def check_lineage(stack: Stack, run: Any, train_run: Any, decision: dict, tasks: list) -> None:
    """One lineage key after the real flow run: from the Prefect flow run, the MLflow run, the
    model version and the DVC experiment, each of the others is one step away."""
    from resnet_mlops.lineage import (
        DVC_EXP_TAG,
        FLOW_RUN_ID_TAG,
        FLOW_RUN_URL_TAG,
        NOTE_TAG,
        RUN_ID_TAG,
        stage_hash,
        stage_tag,
    )
    from resnet_mlops.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
    from resnet_mlops.train.resume import data_version

    workspace, client = stack.workspace, MlflowClient(stack.mlflow.uri)
    run_id, experiment_id = train_run.info.run_id, train_run.info.experiment_id
    tags = train_run.data.tags
    flow_url = f"{stack.api_url.removesuffix('/api')}/flow-runs/flow-run/{run.id}"
    experiment = f"prefect-{run.name}"
    data = workspace / "data" / "preprocessed" / "cifar10"
    version = data_version(data)
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    hashes = {stage_tag(s): stage_hash(lock, s) for s in ("prepare", "preprocess", "train")}

    # The MLflow run -> the Prefect flow run (id and page), the DVC experiment, the commit,
    # the data, dvc.lock's stages (as the workspace's dvc.lock has them) and the version.
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert re.fullmatch(r"plain20-20-it-[0-9a-f]{4}", train_run.info.run_name)
    assert tags[FLOW_RUN_ID_TAG] == str(run.id) and tags[FLOW_RUN_URL_TAG] == flow_url
    assert tags[DVC_EXP_TAG] == experiment
    assert tags["mlflow.source.git.commit"] == git_head(workspace)
    assert tags["data.version"] == version
    assert {key: tags.get(key) for key in hashes} == hashes  # train's added by register
    model = f"models:/{decision['name']}/{decision['version']}"
    assert tags["registry.model"] == model
    note = tags[NOTE_TAG]
    assert "plain20 on cifar10, 20 iterations" in note
    assert flow_url in note and experiment in note and version in note
    (used,) = train_run.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest) == ("cifar10", version)
    splits = json.loads((data / "stats.json").read_text())["splits"]
    assert json.loads(used.dataset.profile) == {"splits": splits}

    # The model version -> the same key, its training run, and a description.
    registered = client.get_model_version(decision["name"], str(decision["version"]))
    assert registered.run_id == run_id and registered.tags[RUN_ID_TAG] == run_id
    for key in (FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG, DVC_EXP_TAG, *hashes):
        assert registered.tags[key] == tags[key], key
    assert registered.tags["git.commit"] == tags["mlflow.source.git.commit"]
    assert registered.tags["data.version"] == version
    assert "Test top-1 error" in registered.description and run_id in registered.description

    # The Prefect flow run -> the MLflow run: the train stage's log says where it is.
    (train_task,) = [t for t in tasks if t.name == "train"]
    url = f"{stack.mlflow.uri}/#/experiments/{experiment_id}/runs/{run_id}"
    assert any(f"MLflow run {run_id}: {url}" in line for line in stage_logs(train_task))

    # The DVC experiment -> the same dvc.lock (what `dvc exp show` names it after).
    shown = json.loads(dvc("exp", "show", "--json", cwd=workspace))
    (rev,) = [
        e["revs"][0]["rev"]
        for r in shown
        for e in r.get("experiments") or []
        if e["name"] == experiment
    ]
    saved = subprocess.run(
        ["git", "show", f"{rev}:dvc.lock"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert {key: stage_hash(yaml.safe_load(saved), key.split(".")[2]) for key in hashes} == hashes


def deploy_once(stack: Stack) -> None:
    """prefect.yaml's deployments on the server, unless the first test deployed them."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name("resnet-pipeline/cifar10-resnet20")
            return
        except ObjectNotFound:
            pass
    cli("deploy", "--all", "--no-prompt", env=stack.env, cwd=stack.workspace)


def test_a_deployment_run_on_a_workspace_outside_its_folder_fails_before_any_stage(
    stack: Stack,
) -> None:
    # A complete DVC project beside the deployment's folder, named with its path as a prefix:
    # were the workspace not checked, the worker would run its whole pipeline.
    elsewhere = Path(f"{stack.workspace}-elsewhere")
    subprocess.run(["git", "clone", "-q", str(stack.workspace), str(elsewhere)], check=True)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    deploy_once(stack)
    output = cli(
        "deployment",
        "run",
        "resnet-pipeline/cifar10-resnet20",
        "--param",
        f"workspace={elsewhere}",
        env=stack.env,
        cwd=stack.workspace,
    )
    run = wait_for_final_state(re.search(r"UUID: ([0-9a-f-]{36})", output)[1])
    assert run.state.is_failed(), f"{run.state.name}: {run.state.message}"
    message = run.state.message
    assert f"workspace {elsewhere} is outside the folders flows may run in (" in message
    assert str(stack.workspace) in message and f"worker's {WORKSPACES_ENV}" in message
    assert "\n" not in message
    # No stage ran: no task run, and the other project is as it was.
    assert task_runs(run.id) == []
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


def test_a_bad_parameter_fails_the_flow_before_any_stage(stack: Stack, stage_env: None) -> None:
    from pipelines.pipeline import resnet_pipeline

    params = (stack.workspace / "params.yaml").read_bytes()
    state = resnet_pipeline(
        overrides=["train.optimizer.lrr=0.1"], workspace=str(stack.workspace), return_state=True
    )
    assert state.is_failed()
    assert "unknown key train.optimizer.lrr" in state.message
    assert task_runs(state.state_details.flow_run_id) == []
    assert (stack.workspace / "params.yaml").read_bytes() == params


def test_a_second_run_on_the_same_workspace_waits_for_the_first(stack: Stack) -> None:
    from prefect.concurrency.sync import concurrency

    from pipelines.workspace import workspace_lock

    with (
        workspace_lock(stack.workspace) as name,
        pytest.raises(TimeoutError),
        concurrency(name, timeout_seconds=5, strict=True),
    ):
        pass  # never reached: the slot is taken
    with concurrency(name, timeout_seconds=60, strict=True):
        pass  # released when the first run ended


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # not written yet, or removed by a run starting afresh
        return 0.0


def _train_process() -> psutil.Process | None:
    """This test's ``resnet train`` (a grandchild through ``dvc repro``), if it runs now."""
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if process.name() not in ("sh", "bash", "dash") and "--auto-resume" in command:
                return process
    return None


def child_flow_runs(parent_id: Any) -> list[Any]:
    """The subflow runs of a flow run (a grid's children)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )


def test_the_grid_runs_each_model_as_a_child_and_a_preempted_train_stage_resumes(
    stack: Stack, stage_env: None
) -> None:
    """The grid's children under one parent run; the first child's training is preempted
    (SIGTERM, as a scheduler would), retried, and resumes its checkpoint and its MLflow run.
    One grid run covers both: each pipeline run costs minutes of process start-ups here."""
    from pipelines.grid import resnet_grid
    from resnet_mlops.engine.checkpoint import load_checkpoint

    checkpoint = stack.workspace / "models" / "checkpoint.pt"
    models = ["plain20", "resnet20"]
    result: dict[str, Any] = {}
    # The thread gets this context: Prefect's settings (the test server) live in a contextvar.
    context = contextvars.copy_context()
    flow = threading.Thread(
        target=context.run,
        args=(
            lambda: result.update(
                state=resnet_grid(
                    models=models,
                    grid="tiny",
                    overrides=["train.schedule.length=30", "train.schedule.milestones=[20]"],
                    retries=2,
                    retry_delay_seconds=1,
                    workspace=str(stack.workspace),
                    return_state=True,
                )
            ),
        ),
    )
    flow.start()
    # The first child's training, once it has written a checkpoint.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        assert flow.is_alive() and time.monotonic() < deadline, "training never checkpointed"
        process = _train_process()
        if process is not None and _mtime(checkpoint) > process.create_time():
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    stopped_at = load_checkpoint(checkpoint)["train_state"]["iteration"]
    flow.join(2 * RUN_TIMEOUT_S)
    state = result["state"]
    assert state.is_completed(), state.message
    assert 0 < stopped_at < 30
    results = state.result()
    assert [r["model"] for r in results] == models
    assert all(r["state"] == "Completed" for r in results)

    client = MlflowClient(stack.mlflow.uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "attributes.run_name = 'grid tiny'")
    assert parent.data.tags["grid"] == "tiny" and parent.info.status == "FINISHED"
    children = client.search_runs(
        experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    # One run per model: the preempted child continued its first attempt's run.
    assert sorted(c.data.tags["model"] for c in children) == sorted(models)
    assert all(c.data.tags["grid"] == "tiny" and c.info.status == "FINISHED" for c in children)
    run_of = {c.data.tags["model"]: c.info.run_id for c in children}
    # The run each child's model.pt names (resumed, not restarted).
    assert [r["run_id"] for r in results] == [run_of[m] for m in models]

    # The preempted stage: retried once, then finished the schedule; the other ran once.
    flows = {f.parameters["model"]: f for f in child_flow_runs(state.state_details.flow_run_id)}
    (train,) = [t for t in task_runs(flows["plain20"].id) if t.name == "train"]
    assert train.run_count == 2 and train.state.is_completed()
    assert results[0]["metrics"]["train"]["iteration"] == 30
    (other,) = [t for t in task_runs(flows["resnet20"].id) if t.name == "train"]
    assert other.run_count == 1 and other.state.is_completed()

    report = artifacts(state.state_details.flow_run_id)["grid-tiny"]
    assert report.type == "markdown" and all(m in report.data for m in models)
    assert {"prefect-tiny-plain20", "prefect-tiny-resnet20"} <= experiment_names(stack.workspace)


# The Kubernetes training flow (pipelines/k8s_train.py): its work pool from
# deploy/k8s/work-pool.json and its deployment from deploy/k8s/prefect.yaml on this server, then
# the flow run here against a local Kubernetes API (tests/kube_api.py) named by a kubeconfig.
K8S_IMAGE = "registry.example.org/team/resnet-mlops:gpu"


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "tester"}}],
                "current-context": "local",
            }
        )
    )
    return path


def test_the_kubernetes_work_pool_and_deployment_are_accepted(stack: Stack) -> None:
    from prefect import get_client

    env = {**stack.env, "RESNET_IMAGE": K8S_IMAGE}
    template = REPO / "deploy" / "k8s" / "work-pool.json"
    cli(
        "work-pool",
        "create",
        "resnet-k8s",
        "--type",
        "kubernetes",
        "--base-job-template",
        str(template),
        env=env,
        cwd=stack.workspace,
    )
    prefect_file = str(REPO / "deploy" / "k8s" / "prefect.yaml")
    cli(
        "deploy",
        "--all",
        "--no-prompt",
        "--prefect-file",
        prefect_file,
        env=env,
        cwd=stack.workspace,
    )
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("resnet-k8s")
        deployment = client.read_deployment_by_name("resnet-k8s-train/imagenet-resnet50-k8s")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(template.read_text())
    assert deployment.work_pool_name == "resnet-k8s"
    assert deployment.job_variables == {"image": K8S_IMAGE}
    assert deployment.parameters["image"] == K8S_IMAGE
    assert deployment.parameters["num_nodes"] == 2
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/workspace"}}
    ]


def test_the_kubernetes_flow_follows_its_trainjob_to_the_end(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.k8s_train import k8s_train

    monkeypatch.chdir(REPO)  # the flow checks the overrides against ./params.yaml
    with kube_api() as api:
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", api.url)))
        api.answer({}, condition("Complete", "Completed", "done"))
        done = k8s_train(
            run="smoke",
            num_nodes=4,
            gpus_per_node=0,
            image=K8S_IMAGE,
            overrides=["train.model=resnet32"],
            poll_seconds=0.05,
            return_state=True,
        )
        assert done.is_completed(), done.message
        result = done.result()
        (created,) = [r for r in api.requests if r.method == "POST"]
        body = created.body
        assert body["metadata"]["name"] == result["trainjob"]
        assert result["trainjob"].startswith("smoke-")
        assert result["state"] == "Complete (Completed: done)"
        assert body["spec"]["trainer"]["numNodes"] == 4
        assert body["spec"]["trainer"]["command"][-1] == "train.model=resnet32"
        tags = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
        run_tags = json.loads(tags["RESNET_RUN_TAGS"])
        assert run_tags["prefect_flow_run"] == str(done.state_details.flow_run_id)
        assert [t.name for t in task_runs(done.state_details.flow_run_id)] == [
            "submit-trainjob",
            "follow-trainjob",
        ]

        # A failed TrainJob fails the flow run with the one-line reason.
        api.answer(condition("Failed", "FailedJobs", "rank 3 exited 1"))
        failed = k8s_train(
            run="smoke", gpus_per_node=0, image=K8S_IMAGE, poll_seconds=0.05, return_state=True
        )
        assert failed.is_failed()
        assert "failed: FailedJobs: rank 3 exited 1" in failed.message

        # A bad override fails before anything reaches the cluster.
        posts = len([r for r in api.requests if r.method == "POST"])
        bad = k8s_train(
            run="smoke", image=K8S_IMAGE, overrides=["train.optimizer.lrr=1"], return_state=True
        )
        assert bad.is_failed() and "unknown key train.optimizer.lrr" in bad.message
        # So does a global batch (params.yaml: 128) the ranks cannot share.
        uneven = k8s_train(run="smoke", num_nodes=3, gpus_per_node=1, return_state=True)
        assert uneven.is_failed()
        assert "train.batch_size 128 is not divisible by 3 ranks" in uneven.message
        assert len([r for r in api.requests if r.method == "POST"]) == posts
