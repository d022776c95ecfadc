"""One lineage key from the Prefect flow run to the MLflow run to the model version: the pieces
(names, dvc.lock hashes, the flow's run tags, the summary's link, the input dataset).

Every link is followed after a real flow run, a deployment from prefect.yaml on a Prefect worker
against a real MLflow server, in tests/e2e/test_prefect_flows.py (``check_lineage``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.pipeline import lineage_run_tags
from pipelines.summary import RunOutcome, summary_markdown
from resnet_mlops.lineage import (
    DVC_EXP_TAG,
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    dataset_input,
    run_name,
    stage_hash,
)
from resnet_mlops.params.train import ScheduleParams


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
