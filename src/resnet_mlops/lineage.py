"""One lineage key on every MLflow run and model version, so each can be found from the others:
the git commit, the data's manifest hash (``data.version``), the DVC experiment (``DVC_EXP_NAME``,
set by ``dvc exp run``), the hashes of ``dvc.lock``'s stages and the Prefect flow run (passed
in ``RESNET_RUN_TAGS``; a worker's flow-run process has ``PREFECT__FLOW_RUN_ID``). The names,
descriptions and tags, gathered from git, DVC and Prefect; :mod:`resnet_mlops.tracking` and
:mod:`resnet_mlops.registry` write them to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE

from resnet_mlops.params.base import ConfigError
from resnet_mlops.params.train import ScheduleParams

log = logging.getLogger(__name__)

DVC_EXP_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
PREFECT_FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"  # set by a Prefect worker for a flow run
DVC_EXP_TAG = "dvc.experiment"
FLOW_RUN_ID_TAG = "prefect.flow_run_id"
FLOW_RUN_URL_TAG = "prefect.flow_run_url"
RUN_ID_TAG = "mlflow.run_id"  # on a model version: the training run (also its run_id field)
NOTE_TAG = MLFLOW_RUN_NOTE  # "mlflow.note.content": the description MLflow's UI shows
DATA_VERSION_TAG = "data.version"  # the preprocessed data's manifest hash
GIT_DIRTY_TAG = "git.dirty"
# Extra run tags handed down through the environment, which reaches the trainer unchanged
# through `dvc repro` and its fixed command lines: a JSON object of strings, e.g. a grid's
# {"mlflow.parentRunId": "<id>", "grid": "paper-cifar10"} (MLflow's UI nests the run).
RUN_TAGS_ENV = "RESNET_RUN_TAGS"


def env_tags() -> dict[str, str]:
    """The tags in ``RESNET_RUN_TAGS`` (empty when unset); ConfigError if not JSON strings."""
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    try:
        tags = json.loads(text) if text else {}
    except ValueError as error:
        raise ConfigError(f"{RUN_TAGS_ENV}: not JSON: {error}") from None
    if not (isinstance(tags, dict) and all(isinstance(x, str) for kv in tags.items() for x in kv)):
        raise ConfigError(f"{RUN_TAGS_ENV}: expected a JSON object of string values")
    return tags


def git_tags(root: Path) -> dict[str, str]:
    """``{"mlflow.source.git.commit": sha, "git.dirty": "true"|"false"}`` for the checkout
    (untracked files count: a new module changes the code); outside one: {} and a warning."""
    try:
        commit, status = (
            subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
            ).stdout.strip()
            for args in (("rev-parse", "HEAD"), ("status", "--porcelain"))
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        log.warning("no git commit recorded for %s: %s", root, str(detail).strip())
        return {}
    return {MLFLOW_GIT_COMMIT: commit, GIT_DIRTY_TAG: "true" if status else "false"}


def stage_tag(stage: str) -> str:
    """The tag holding the hash of ``stage``'s entry in ``dvc.lock``."""
    return f"dvc.stage.{stage}.md5"


def run_name(model: str, schedule: ScheduleParams, short_id: str | None = None) -> str:
    """A run name that differs at a glance: ``resnet20-64k-it-<short_id or 4 random hex>``
    (``64k-it``: 64000 iterations; ``90-ep``: 90 epochs)."""
    n = schedule.length
    length = f"{n / 1000:g}k" if n >= 1000 and n % 100 == 0 else str(n)
    unit = "it" if schedule.unit == "iterations" else "ep"
    return f"{model}-{length}-{unit}-{short_id or uuid.uuid4().hex[:4]}"


def env_lineage_tags(env: Mapping[str, str]) -> dict[str, str]:
    """The DVC experiment and the Prefect flow run named in the environment ``env``."""
    names = {DVC_EXP_ENV: DVC_EXP_TAG, PREFECT_FLOW_RUN_ENV: FLOW_RUN_ID_TAG}
    return {tag: env[name] for name, tag in names.items() if env.get(name)}


def stage_hash(lock: Mapping[str, Any], stage: str) -> str | None:
    """An md5 over the hashes the parsed ``dvc.lock`` records for ``stage``'s deps and outs
    (None without the stage): it changes exactly when DVC would rerun the stage, params aside."""
    entry = (lock.get("stages") or {}).get(stage)
    if not isinstance(entry, Mapping):
        return None
    files = sorted(
        (str(item.get("path")), str(item.get("md5")))
        for part in ("deps", "outs")
        for item in entry.get(part) or []
        if isinstance(item, Mapping)
    )
    return hashlib.md5(json.dumps(files).encode()).hexdigest()


def lock_tags(lock: Mapping[str, Any], stages: tuple[str, ...]) -> dict[str, str]:
    """``dvc.stage.<stage>.md5`` for each of ``stages`` that ``dvc.lock`` records."""
    hashes = {stage: stage_hash(lock, stage) for stage in stages}
    return {stage_tag(stage): md5 for stage, md5 in hashes.items() if md5}


def run_description(
    model: str, dataset: str, schedule: ScheduleParams, data_version: str, tags: Mapping[str, str]
) -> str:
    """The run's description (``mlflow.note.content``): what ran, on which data, from where."""
    lines = [
        f"{model} on {dataset}, {schedule.length} {schedule.unit} "
        f"(lr steps at {list(schedule.milestones)}).",
        f"Data: manifest hash {data_version}.",
        f"Code: git {tags.get(MLFLOW_GIT_COMMIT, 'unknown')[:12]}.",
    ]
    if DVC_EXP_TAG in tags:
        lines.append(f"DVC experiment: {tags[DVC_EXP_TAG]}.")
    if FLOW_RUN_ID_TAG in tags:
        where = tags.get(FLOW_RUN_URL_TAG) or tags[FLOW_RUN_ID_TAG]
        lines.append(f"Prefect flow run: {where}.")
    return "\n".join(lines)


def model_version_description(
    test_error: float, split: str, decision: str, promoted: bool, run_id: str | None
) -> str:
    """A model version's description: its test error and the champion decision."""
    verdict = "champion" if promoted else "challenger"
    run = f" Training run {run_id}." if run_id else ""
    return f"Test top-1 error {test_error:.2f}% on {split}. {verdict}: {decision}.{run}"


def dataset_input(
    name: str, source: Path, digest: str, splits: Mapping[str, int], context: str = "train"
) -> DatasetInput:
    """The preprocessed data as a run's input, for ``MlflowClient.log_inputs`` (the tracker
    opens no fluent run for ``mlflow.log_input``): its name, folder and manifest hash, and the
    split sizes, which tell two versions apart at a glance in the run's Datasets panel."""
    profile = json.dumps({"splits": dict(splits)})
    dataset = Dataset(name, digest, "local", json.dumps({"uri": str(source)}), profile=profile)
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """``<server>/#/experiments/<id>/runs/<run>`` for an HTTP(S) server; None otherwise."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
