"""One lineage key from the Prefect flow run to the MLflow run to the model version.

The fast tests check the pieces (names, dvc.lock hashes, the flow's run tags, the summary's
link). The slow one runs ``resnet train``, ``resnet evaluate`` and ``resnet register`` as the
pipeline flow's ``dvc repro`` does (``RESNET_RUN_TAGS`` from
:func:`pipelines.pipeline.lineage_run_tags`, ``DVC_EXP_NAME``), in a git checkout with a
``dvc.lock``, against a real MLflow server, and follows every link.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipelines.pipeline import lineage_run_tags
from pipelines.summary import RunOutcome, summary_markdown
from resnet_mlops.params.train import ScheduleParams
from resnet_mlops.tracking.lineage import (
    DVC_EXP_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    NOTE_TAG,
    RUN_ID_TAG,
    dataset_input,
    run_name,
    stage_hash,
    stage_tag,
)
from resnet_mlops.train.resume import data_version
from tests.e2e.test_dvc_pipeline import GIT_IDENTITY
from tests.support.mlflow_server import start_mlflow_server
from tests.support.project import PARAMS

SMALL = [
    "train.batch_size=32",
    "train.schedule.length=30",
    "train.schedule.milestones=[20]",
    "train.log_every=10",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
    "evaluate.batch_size=100",
]


def schedule(unit: str, length: int) -> ScheduleParams:
    return ScheduleParams(
        unit=unit,
        length=length,
        milestones=(length // 2,),
        gamma=0.1,
        warmup_length=0,
        warmup_lr=0.01,
        warmup_mode="constant",
    )


def lock(md5: str) -> dict:
    return {
        "stages": {
            "train": {
                "deps": [{"path": "data/preprocessed/cifar10", "md5": md5}],
                "outs": [{"path": "models/model.pt", "md5": "b" * 32}],
            }
        }
    }


def test_run_names_tell_model_schedule_and_run_apart() -> None:
    assert run_name("resnet20", schedule("iterations", 64000), "3f2a") == "resnet20-64k-it-3f2a"
    assert run_name("resnet56", schedule("iterations", 30), "0000") == "resnet56-30-it-0000"
    assert run_name("resnet50", schedule("epochs", 90), "abcd") == "resnet50-90-ep-abcd"
    first, second = (run_name("resnet20", schedule("iterations", 500)) for _ in range(2))
    assert re.fullmatch(r"resnet20-500-it-[0-9a-f]{4}", first) and first != second


def test_a_stage_hash_changes_with_its_deps_and_is_none_without_the_stage() -> None:
    assert stage_hash(lock("a" * 32), "train") == stage_hash(lock("a" * 32), "train")
    assert stage_hash(lock("a" * 32), "train") != stage_hash(lock("c" * 32), "train")
    assert stage_hash(lock("a" * 32), "evaluate") is None
    assert stage_hash({}, "train") is None


def test_the_flow_hands_its_run_and_experiment_to_the_stages() -> None:
    tags = lineage_run_tags(
        {"grid": "g"}, ["train.model=resnet32"], "fr-1", "http://ui/flow-runs/flow-run/fr-1", "e"
    )
    assert tags == {
        "grid": "g",
        "overrides": '["train.model=resnet32"]',
        FLOW_RUN_ID_TAG: "fr-1",
        FLOW_RUN_URL_TAG: "http://ui/flow-runs/flow-run/fr-1",
        DVC_EXP_TAG: "e",
    }
    # Prefect without a UI address makes "None/flow-runs/...": no link rather than a broken one.
    assert lineage_run_tags(None, [], "fr-1", "None/flow-runs/flow-run/fr-1", None) == {
        FLOW_RUN_ID_TAG: "fr-1"
    }
    assert lineage_run_tags(None, [], None, None, None) == {}


def test_the_flow_summary_links_the_mlflow_run() -> None:
    link = "http://127.0.0.1:5000/#/experiments/1/runs/abc"
    outcome = RunOutcome("cifar10", "resnet20", "http://127.0.0.1:5000", "abc", link)
    assert f"[abc]({link})" in summary_markdown(outcome, "my-flow-run")


def test_the_dataset_carries_its_manifest_hash_source_and_split_sizes(tmp_path: Path) -> None:
    entity = dataset_input("cifar10", tmp_path, "0123abcd", {"train": 10}).dataset
    assert (entity.name, entity.digest, entity.source_type) == ("cifar10", "0123abcd", "local")
    assert json.loads(entity.source) == {"uri": str(tmp_path)}
    assert json.loads(entity.profile) == {"splits": {"train": 10}}


def resnet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["resnet", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert result.returncode == 0, f"resnet {args[0]}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_train_and_register_under_a_flow_run_carry_one_lineage_key(
    small_cifar: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_bytes(PARAMS.read_bytes())
    git_env = {**os.environ, **GIT_IDENTITY}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        subprocess.run(command, cwd=repo, env=git_env, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    # dvc.lock as `dvc repro` leaves it after train and evaluate (ignored: not a code change).
    (repo / ".git" / "info" / "exclude").write_text("dvc.lock\nmodels/\nmetrics/\nplots/\n")
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock("d" * 32)))
    flow_run_id = str(uuid.uuid4())
    flow_url = f"http://127.0.0.1:4200/flow-runs/flow-run/{flow_run_id}"
    tags = lineage_run_tags(None, [], flow_run_id, flow_url, "prefect-lineage")
    server = start_mlflow_server(tmp_path / "mlflow")
    try:
        env = {
            **git_env,
            "MLFLOW_TRACKING_URI": server.uri,
            "RESNET_RUN_TAGS": json.dumps(tags),
            "DVC_EXP_NAME": "prefect-lineage",
        }
        data = ["--data", str(small_cifar)]
        trained = resnet("train", *data, *SMALL, env=env, cwd=repo)
        resnet("evaluate", *data, *SMALL, env=env, cwd=repo)
        resnet("register", *data, "register.name=lineage-classifier", env=env, cwd=repo)

        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("resnet-cifar10").experiment_id])
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        assert f"MLflow run {run_id}: {server.uri}/#/experiments/{experiment_id}/runs/{run_id}" in (
            trained.stderr + trained.stdout
        )
        experiment = client.get_experiment(experiment_id)
        assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
        assert re.fullmatch(r"resnet20-30-it-[0-9a-f]{4}", run.info.run_name)
        run_tags = run.data.tags
        version = data_version(small_cifar)
        train_hash = stage_hash(lock("d" * 32), "train")
        assert run_tags[FLOW_RUN_ID_TAG] == flow_run_id
        assert run_tags[FLOW_RUN_URL_TAG] == flow_url
        assert run_tags[DVC_EXP_TAG] == "prefect-lineage"
        assert run_tags["mlflow.source.git.commit"] == commit
        assert run_tags["data.version"] == version
        assert run_tags[stage_tag("train")] == train_hash  # added by register
        assert run_tags["registry.model"] == "models:/lineage-classifier/1"
        note = run_tags[NOTE_TAG]
        assert "resnet20 on cifar10" in note and flow_url in note and "prefect-lineage" in note
        (used,) = run.inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest) == ("cifar10", version)
        assert json.loads(used.dataset.source) == {"uri": str(small_cifar.resolve())}
        splits = json.loads((small_cifar / "stats.json").read_text())["splits"]
        assert json.loads(used.dataset.profile) == {"splits": splits}

        model = client.get_model_version("lineage-classifier", "1")
        assert model.run_id == run_id and model.tags[RUN_ID_TAG] == run_id
        for key in (FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG, DVC_EXP_TAG, stage_tag("train")):
            assert model.tags[key] == run_tags[key], key
        assert model.tags["git.commit"] == commit and model.tags["data.version"] == version
        assert "Test top-1 error" in model.description and "champion" in model.description
    finally:
        server.stop()
