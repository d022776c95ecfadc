"""The Prefect flows' building blocks without a server: the stages come from dvc.yaml in an
order DVC allows, params are validated and written the way DVC reads them, and a workspace
outside the allowed folders is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.dag import pipeline_stages
from pipelines.grid import resnet_grid
from pipelines.pipeline import (
    NPROC_ENV,
    DvcHintFilter,
    experiment_name,
    resnet_pipeline,
    stage_env,
    stage_task,
)
from pipelines.summary import RunOutcome, artifact_key, run_link, summary_markdown
from pipelines.workspace import (
    WORKSPACES_ENV,
    ConfigError,
    WorkspaceNotAllowed,
    allowed_workspaces,
    check_workspace,
    flow_workspace,
    lock_name,
    params_for_run,
    run_overrides,
    validate_params,
    write_params,
)
from resnet_mlops.lineage import RUN_TAGS_ENV
from tests.support.project import PARAMS, REPO


def test_the_flow_runs_the_stages_dvc_lists_each_after_its_dependencies() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stages = pipeline_stages(REPO)
    assert sorted(stages) == sorted(listed) and len(stages) == len(listed)
    # Every stage that reads another stage's output runs after it (the DAG of dvc.yaml).
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    dataset = yaml.safe_load(PARAMS.read_text())["dataset"]

    def paths(entries: list) -> set[str]:
        names = {next(iter(e)) if isinstance(e, dict) else e for e in entries}
        return {n.replace("${dataset}", dataset) for n in names}

    producer = {
        path: name
        for name, stage in pipeline.items()
        for key in ("outs", "metrics")
        for path in paths(stage.get(key, []))
    }
    for name, stage in pipeline.items():
        for dep in paths(stage.get("deps", [])):
            if dep in producer:
                assert stages.index(producer[dep]) < stages.index(name), (dep, name)


def test_overrides_are_checked_by_the_stages_parsers() -> None:
    assert run_overrides("cifar10", "resnet32", ["train.seed=1"]) == [
        "dataset=cifar10",
        "train.model=resnet32",
        "train.seed=1",
    ]
    tree = validate_params(PARAMS, ["train.model=plain56", "evaluate.batch_size=64"])
    assert tree["train"]["model"] == "plain56" and tree["evaluate"]["batch_size"] == 64
    for bad, message in [
        ("train.lrr=1", "unknown key train.lrr"),
        ("train.model=resnet21", "unknown model 'resnet21'"),
        ("register.margin=abc", "register.margin"),
        ("prepare.cifar10.md5", "not of the form key=value"),
        ("dataset=mnist", "dataset"),
    ]:
        with pytest.raises(ConfigError, match=message) as error:
            validate_params(PARAMS, [bad])
        assert str(error.value).startswith(f"{PARAMS}:")


def test_written_params_keep_comments_and_change_only_the_keys_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, params)
    before = params.read_text()
    write_params(params, ["train.model=resnet32", "train.schedule.milestones=[10, 20]"])
    after = params.read_text()
    tree = yaml.safe_load(after)
    assert tree["train"]["model"] == "resnet32"
    assert tree["train"]["schedule"]["milestones"] == [10, 20]
    # Comments and layout stay (DVC's own round-trip YAML, as `dvc exp run -S` writes).
    comments = [line.partition("#")[2] for line in before.splitlines() if "#" in line]
    assert all(f"#{comment}" in after for comment in comments)
    assert "milestones: [10, 20]" in after and "model: resnet32  # any name" in after
    assert len(after.splitlines()) == len(before.splitlines())
    write_params(params, ["train.model=resnet32"])  # no change: the file is not rewritten
    assert params.read_text() == after


def test_a_runs_overrides_leave_params_yaml_byte_identical(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, params)
    before = params.read_bytes()
    overrides = ["train.schedule.length=200", "train.model=plain20"]
    with params_for_run(params, overrides):
        during = yaml.safe_load(params.read_text())
        assert during["train"]["schedule"]["length"] == 200
        assert during["train"]["model"] == "plain20"
    assert params.read_bytes() == before
    # A failed run puts it back too.
    with pytest.raises(RuntimeError, match="stage failed"), params_for_run(params, overrides):
        raise RuntimeError("stage failed")
    assert params.read_bytes() == before
    # Every write is a rename of a whole file: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_overrides_stay_in_params_yaml_only_when_asked(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, params)
    with params_for_run(params, ["train.schedule.length=200"], persist=True):
        pass
    assert yaml.safe_load(params.read_text())["train"]["schedule"]["length"] == 200


def test_an_edit_made_during_the_run_is_not_undone(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, params)
    edited = b"# the user's own edit\n" + PARAMS.read_bytes()
    with (
        pytest.warns(UserWarning, match=r"params.yaml changed during the run.*schedule"),
        params_for_run(params, ["train.schedule.length=200"]),
    ):
        params.write_bytes(edited)
    assert params.read_bytes() == edited


def test_each_stage_is_its_own_task_with_its_own_key() -> None:
    stages = pipeline_stages(REPO)
    tasks = [stage_task(stage) for stage in stages]
    assert [t.name for t in tasks] == stages
    # Prefect's task key (what its UI and caching group task runs by) differs per stage.
    assert len({t.task_key for t in tasks}) == len(stages)
    assert all(t.task_key.startswith(f"stage_{s}-") for t, s in zip(tasks, stages, strict=True))
    # The same stage is the same task in every flow run (the key is stable).
    assert stage_task(stages[0]) is tasks[0]
    assert stage_task(stages[0]).with_options(retries=3).task_key == tasks[0].task_key


def test_dvcs_git_hint_is_left_out_of_the_stage_log(tmp_path: Path) -> None:
    """Real ``dvc repro`` output, so a new DVC wording shows up here."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*command: str) -> str:
        # One stream, as the flow reads it.
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=True,
        )
        return result.stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hello from the stage > out.txt\n    outs: [out.txt]\n"
    )
    output = run(sys.executable, "-m", "dvc", "repro", "--single-item", "hello").splitlines()
    assert any("git add" in line for line in output), output  # the hint is there to drop
    hint = DvcHintFilter()
    kept = [line for line in output if hint.keep(line)]
    assert kept == [
        "Running stage 'hello':",
        "> echo hello from the stage > out.txt",
        "Generating lock file 'dvc.lock'",
        "Updating lock file 'dvc.lock'",
    ], output
    assert not any(word in line for line in kept for word in ("git add", "autostage", "push"))


def test_the_summary_lists_the_runs_overrides() -> None:
    outcome = RunOutcome("cifar10", "plain20", "sqlite:///x.db", "abc", None)
    assert "Overrides" not in summary_markdown(outcome)
    outcome.overrides = ["train.model=plain20", "train.schedule.length=200"]
    assert "`train.model=plain20`, `train.schedule.length=200`" in summary_markdown(outcome)
    assert outcome.as_dict()["overrides"] == outcome.overrides


def test_stage_environment_grid_tags_and_processes_per_node() -> None:
    tags = {"mlflow.parentRunId": "abc", "grid": "g"}
    assert stage_env("train", tags, 4) == {
        RUN_TAGS_ENV: '{"mlflow.parentRunId": "abc", "grid": "g"}',
        NPROC_ENV: "4",
    }
    assert stage_env("evaluate", None, 4) == {}
    assert stage_env("train", None, 1) == {}


def test_names_links_and_locks() -> None:
    assert experiment_name("crimson fox/1") == "prefect-crimson-fox-1"
    assert artifact_key("cifar10", "ResNet_20", "summary") == "cifar10-resnet-20-summary"
    assert run_link("sqlite:///tmp/mlflow.db", "abc") is None
    assert lock_name(REPO) == lock_name(REPO / ".") != lock_name(REPO.parent)


def _refused(workspace: str | Path, allowed: list[Path]) -> str:
    with pytest.raises(WorkspaceNotAllowed) as error:
        check_workspace(workspace, allowed)
    return str(error.value)


def test_a_workspace_must_really_lie_inside_an_allowed_folder(tmp_path: Path) -> None:
    allowed_folder = tmp_path / "srv" / "ws"
    (allowed_folder / "sub").mkdir(parents=True)
    evil = tmp_path / "srv" / "ws-evil"
    evil.mkdir()
    allowed = allowed_workspaces("", [allowed_folder])
    assert check_workspace(allowed_folder, allowed) == allowed_folder
    assert check_workspace(allowed_folder / "sub", allowed) == allowed_folder / "sub"
    assert check_workspace(f"{allowed_folder}/sub/..", allowed) == allowed_folder

    # The prefix trick: /srv/ws-evil starts with the string /srv/ws but is not inside it.
    message = _refused(evil, allowed)
    assert message == (
        f"workspace {evil} is outside the folders flows may run in ({allowed_folder}); "
        f"the worker's {WORKSPACES_ENV} (folders separated by ':') adds more"
    )
    # `..` out of the allowed folder.
    dotdot = f"{allowed_folder}/../ws-evil"
    assert _refused(dotdot, allowed).startswith(f"workspace {dotdot} (really {evil}) is outside")
    # A symlink inside the allowed folder that leads out of it.
    (allowed_folder / "link").symlink_to(evil)
    assert f"(really {evil})" in _refused(allowed_folder / "link", allowed)
    assert f"(really {evil}/sub)" in _refused(allowed_folder / "link" / "sub", allowed)
    # A symlink from elsewhere into the allowed folder leads inside: its real path is checked.
    (tmp_path / "alias").symlink_to(allowed_folder)
    assert check_workspace(tmp_path / "alias", allowed) == allowed_folder
    # An allowed folder given through a symlink is compared by its real path too.
    assert check_workspace(allowed_folder, allowed_workspaces("", [tmp_path / "alias"]))
    assert "\n" not in message


def test_the_allow_list_is_the_deployments_folder_and_the_workers_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment, extra, other = (tmp_path / name for name in ("deployment", "extra", "other"))
    for folder in (deployment, extra, other):
        folder.mkdir()
    assert allowed_workspaces(f"{extra}::{extra}{os.pathsep}", [deployment, deployment]) == [
        deployment,
        extra,
    ]
    with pytest.raises(WorkspaceNotAllowed, match=f"^{WORKSPACES_ENV}: 'extra' is not an absolute"):
        allowed_workspaces(f"{extra}:extra", [deployment])

    # A deployment runs in its folder (its set_working_directory step): that folder and the
    # flows' own checkout are allowed, nothing else unless the worker's variable says so.
    monkeypatch.chdir(deployment)
    monkeypatch.delenv(WORKSPACES_ENV, raising=False)
    assert flow_workspace(None) == deployment
    assert flow_workspace("") == deployment
    assert flow_workspace(str(REPO)) == REPO.resolve()
    with pytest.raises(WorkspaceNotAllowed, match=f"workspace {other} is outside"):
        flow_workspace(str(other))
    monkeypatch.setenv(WORKSPACES_ENV, f"{extra}{os.pathsep}{other}")
    assert flow_workspace(str(other)) == other
    with pytest.raises(WorkspaceNotAllowed, match=f"workspace {tmp_path} is outside"):
        flow_workspace(str(tmp_path))  # the parent of allowed folders is not allowed


@pytest.mark.parametrize("flow", [resnet_pipeline, resnet_grid], ids=lambda f: f.name)
def test_the_flows_check_the_workspace_before_anything_else(
    flow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DVC project outside the allowed folders, whose stage would leave a file if it ran.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dvc.yaml").write_text("stages:\n  x:\n    cmd: touch ran\n")
    shutil.copyfile(PARAMS, elsewhere / "params.yaml")
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(WORKSPACES_ENV, raising=False)
    # The flow's own function, without Prefect's engine: the check is the first thing it does.
    with pytest.raises(WorkspaceNotAllowed, match=f"^workspace {elsewhere} is outside"):
        flow.fn(workspace=str(elsewhere))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["dvc.yaml", "params.yaml"]
