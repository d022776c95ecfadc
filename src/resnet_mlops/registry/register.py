"""``resnet register``: the evaluated model into the MLflow Model Registry, under the champion rule.

The new version gets the alias ``challenger``; ``champion`` moves to it only if its test error
beats the champion's by more than ``register.margin`` points on the same test data (see
:mod:`~resnet_mlops.registry.champion`). The version is the classifier the training run logged
(found by the sha256 of ``model.pt``); only a run without it (tracking was off or offline, or
the file came from elsewhere) gets it logged here. The run also receives the decision;
``metrics/register.json`` records it for DVC.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.io import check_output_file, sha256_file, write_json_atomic
from resnet_mlops.lineage import (
    DATA_VERSION_TAG,
    DVC_EXP_TAG,
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    GIT_DIRTY_TAG,
    RUN_ID_TAG,
    lock_tags,
    model_version_description,
)
from resnet_mlops.mlflow_store import global_tracking_uri
from resnet_mlops.params.register import RegisterParams
from resnet_mlops.registry.champion import (
    ERROR_TAG,
    TEST_VERSION_TAG,
    Decision,
    Standing,
    decide,
    recorded_standing,
    rescore,
)
from resnet_mlops.registry.connection import CHALLENGER, CHAMPION, RegistryError, reaching
from resnet_mlops.registry.scoring import split_version
from resnet_mlops.serving.package import (
    INPUT_DESCRIPTION,
    MODEL_SHA256_TAG,
    model_summary,
    write_model_files,
)
from resnet_mlops.tracking.runs import experiment_id, log_classifier, logged_classifier

log = logging.getLogger(__name__)

DECISION_TAG = "registry.decision.json"  # the champion decision, as metrics/register.json has it


@dataclass(frozen=True)
class RegisterPaths:
    """What ``register`` reads and writes."""

    model: Path  # models/model.pt
    evaluation: Path  # metrics/evaluate.json
    data: Path  # the preprocessed data the evaluation used
    out: Path  # metrics/register.json
    lock: Path = Path("dvc.lock")  # for the data's DVC hash, when DVC ran the stages


# dvc.lock's entries that are current when register runs under `dvc repro` (its own is not).
LOCKED_STAGES = ("prepare", "preprocess", "train", "evaluate")


def model_name(dataset: str, params: RegisterParams) -> str:
    """The registered model's name: one per task."""
    return f"{dataset}-classifier" if params.name == "auto" else params.name


def read_evaluation(path: Path, model: str) -> dict[str, Any]:
    """``metrics/evaluate.json``, checked to be about ``model``.

    Raises:
        RegistryError: missing, not JSON, without a test error, or about another model.
    """
    try:
        evaluation = json.loads(path.read_text())
        float(evaluation[ERROR_TAG]), str(evaluation["split"])
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file (run the evaluate stage)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise RegistryError(f"{path}: not an evaluation ({ERROR_TAG} and split)") from None
    if evaluation.get("model") != model:
        raise RegistryError(f"{path}: evaluates {evaluation.get('model')!r}, not {model!r}")
    return evaluation


def _read_lock(lock: Path) -> dict[str, Any]:
    """The parsed ``dvc.lock``; empty when there is none (the stages ran without DVC)."""
    try:
        tree = yaml.safe_load(lock.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def lineage_tags(provenance: dict[str, Any], lock: dict[str, Any]) -> dict[str, str]:
    """The lineage key the training run recorded (DVC experiment, Prefect flow run), its run
    id, and the hashes of the stages ``dvc.lock`` records now (see
    :mod:`resnet_mlops.lineage`)."""
    keys = (DVC_EXP_TAG, FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG)
    tags = {key: str(provenance[key]) for key in keys if provenance.get(key)}
    if provenance.get("mlflow_run_id"):
        tags[RUN_ID_TAG] = str(provenance["mlflow_run_id"])
    return {**tags, **lock_tags(lock, LOCKED_STAGES)}


def dvc_hash(lock: Path, data: Path) -> str | None:
    """The hash DVC last recorded in ``dvc.lock`` for the output ``data``; None without one.

    Under ``dvc repro`` it is current: DVC updates the lock file after each stage, before the
    next one starts.
    """
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return None
    wanted = data.as_posix().rstrip("/")
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path", "").rstrip("/") == wanted:
                return out.get("md5")
    return None


def version_tags(
    dataset: str,
    meta: dict[str, Any],
    evaluation: dict[str, Any],
    test_version: str,
    data_hash: str | None,
) -> dict[str, str]:
    """What a version records: data versions, the commit, the params and the test metrics."""
    provenance = meta["provenance"]
    tags = {
        "dataset": dataset,
        "model": meta["model"],
        "parameters": str(meta["parameters"]),
        DATA_VERSION_TAG: str(provenance.get("data_version", "unknown")),
        TEST_VERSION_TAG: test_version,
        "data.test_split": str(evaluation["split"]),
        "git.commit": str(provenance.get(MLFLOW_GIT_COMMIT, "unknown")),
        GIT_DIRTY_TAG: str(provenance.get(GIT_DIRTY_TAG, "unknown")),
        "params": json.dumps(meta["config"], sort_keys=True, default=str),
        "val_error": str(meta["metrics"].get("val_error", "")),
        "input": INPUT_DESCRIPTION,
    }
    if data_hash:
        tags["data.dvc_md5"] = data_hash
    for key, value in evaluation.items():
        if key.startswith("test_") or key == "samples":
            tags[key] = str(value)
    return tags


def _registered_already(
    client: MlflowClient, name: str, tags: dict[str, str]
) -> ModelVersion | None:
    """The version of ``name`` registered from this very model file with this very evaluation
    (every tag of ``tags`` equal, :data:`MODEL_SHA256_TAG` included), if there is one.

    A register killed after it created the version (SIGTERM to ``dvc repro`` does not stop it,
    and DVC then reruns the stage) must not register the model a second time.
    """
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    same = [v for v in versions if all(v.tags.get(k) == value for k, value in tags.items())]
    return min(same, key=lambda v: int(v.version)) if same else None


@contextlib.contextmanager
def _model_run(
    client: MlflowClient, meta: dict[str, Any], uri: str, run_id: str | None = None
) -> Iterator[str]:
    """``run_id``, or else the model's training run, re-opened; or a new run when this server
    does not have it.

    A re-opened run ends FINISHED whatever happens here: a failed registration does not make
    the training a failure.
    """
    run_id = run_id or meta["provenance"].get("mlflow_run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("training run %s is not in %s; registering from a new run", run_id, uri)
            run_id = None
    if run_id:
        mlflow.start_run(run_id=run_id)
        try:
            yield run_id
        finally:
            mlflow.end_run("FINISHED")
        return
    experiment = meta["config"].get("train", {}).get("experiment", "Default")
    with mlflow.start_run(
        experiment_id=experiment_id(client, experiment, uri), run_name=f"register {meta['model']}"
    ) as run:
        yield run.info.run_id


def _champion_standing(
    client: MlflowClient, name: str, challenger: Standing, dataset: str, data: Path, split: str
) -> tuple[Standing | None, bool, str | None]:
    """The champion's figure on the challenger's test data, whether it was re-scored for that,
    and why it could not be had (None when it could)."""
    aliases = client.get_registered_model(name).aliases
    if CHAMPION not in aliases:
        return None, False, None
    version = client.get_model_version(name, aliases[CHAMPION])
    recorded = recorded_standing(version)
    if recorded is not None and recorded.test_version == challenger.test_version:
        return recorded, False, None
    try:
        return rescore(client, version, data, dataset, split, challenger.test_version), True, None
    except Exception as error:  # its artifacts, not ours: whatever breaks, keep the champion
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        problem = f"champion v{version.version} cannot be scored on this test data: {reason}"
        return None, False, problem


def _rank(
    client: MlflowClient,
    name: str,
    challenger: Standing,
    margin: float,
    data: Path,
    split: str,
    dataset: str,
) -> Decision:
    """Apply the champion rule and move the aliases."""
    aliases = client.get_registered_model(name).aliases
    if str(aliases.get(CHAMPION)) == challenger.version:  # an int from a SQL store, str by REST
        # A version registered again (see _registered_already) that is the champion already:
        # its recorded decision stands; comparing it with itself would "keep" it, unpromoted.
        version = client.get_model_version(name, challenger.version)
        try:
            decision = Decision.from_metrics(json.loads(version.tags[DECISION_TAG]))
        except (KeyError, ValueError, TypeError):  # killed between the alias and the tag
            reason = f"v{challenger.version} is the champion already"
            decision = Decision(True, reason, challenger, None, margin)
    else:
        found = _champion_standing(client, name, challenger, dataset, data, split)
        champion, rescored, problem = found
        if problem is None:
            decision = decide(challenger, champion, margin, rescored)
        else:
            decision = Decision(False, problem, challenger, None, margin)
    client.set_registered_model_alias(name, CHALLENGER, challenger.version)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    client.set_model_version_tag(name, challenger.version, "registry.decision", decision.reason)
    decision_json = json.dumps(decision.as_metrics(), sort_keys=True)
    client.set_model_version_tag(name, challenger.version, DECISION_TAG, decision_json)
    return decision


def _record(name: str, decision: Decision, out: Path, lineage: dict[str, str]) -> None:
    """Write the decision for DVC and log it, with both figures and the lineage tags the run
    lacks (the train stage's own ``dvc.lock`` hash), to the active run."""
    write_json_atomic(out, {"name": name, **decision.as_metrics()})
    figures = {
        "registry_challenger_test_error": decision.challenger.test_error,
        "registry_promoted": float(decision.promoted),
    }
    if decision.champion is not None:
        figures["registry_champion_test_error"] = decision.champion.test_error
    mlflow.log_metrics(figures)
    mlflow.set_tags(
        {
            **{key: value for key, value in lineage.items() if key != RUN_ID_TAG},
            "registry.model": f"models:/{name}/{decision.challenger.version}",
            "registry.decision": decision.reason,
        }
    )
    mlflow.log_artifact(str(out), "registry")


def register(dataset: str, params: RegisterParams, paths: RegisterPaths, uri: str) -> Decision:
    """Log, register and rank the evaluated model; write ``paths.out``.

    Raises:
        CheckpointError: the model file is missing or corrupt.
        DataError: the preprocessed data has no manifest for the test split.
        RegistryError: a bad evaluation file, or the tracking server cannot be reached.
        OutputError: ``paths.out`` is a file ``resnet register`` did not write.
    """
    check_output_file(paths.out, "register --out")
    _, meta = load_model(paths.model)
    evaluation = read_evaluation(paths.evaluation, meta["model"])
    split = str(evaluation["split"])
    test_version = split_version(paths.data, dataset, split)
    tags = version_tags(dataset, meta, evaluation, test_version, dvc_hash(paths.lock, paths.data))
    tags[MODEL_SHA256_TAG] = sha256_file(paths.model)
    lineage = lineage_tags(meta["provenance"], _read_lock(paths.lock))
    name = model_name(dataset, params)
    client = MlflowClient(uri)
    with (
        tempfile.TemporaryDirectory(prefix="resnet-register-") as tmp,
        reaching(uri),
        global_tracking_uri(uri),
    ):
        existing = _registered_already(client, name, tags)
        with _model_run(client, meta, uri, existing.run_id if existing else None) as run_id:
            lineage[RUN_ID_TAG] = run_id  # the run the version was logged from
            if existing is None:
                sha256 = tags[MODEL_SHA256_TAG]
                model_uri = logged_classifier(client, run_id, sha256)
                if model_uri is None:  # untracked, not synced yet, or a model.pt from elsewhere
                    write_model_files(load_model(paths.model)[0], meta, paths.model, Path(tmp))
                    model_uri = log_classifier(Path(tmp), uri, run_id, model_summary(meta, sha256))
                version = mlflow.register_model(model_uri, name, tags={**tags, **lineage})
                number = str(version.version)
            else:
                number = str(existing.version)
                log.info(
                    "%s is registered already as %s v%s (same model file and evaluation); "
                    "not registering it again",
                    paths.model,
                    name,
                    number,
                )
            if not client.get_registered_model(name).description:
                client.update_registered_model(
                    name, f"{dataset} image classifier (resnet-mlops). Input: {INPUT_DESCRIPTION}"
                )
            challenger = Standing(number, float(evaluation[ERROR_TAG]), test_version)
            decision = _rank(client, name, challenger, params.margin, paths.data, split, dataset)
            client.update_model_version(
                name,
                number,
                model_version_description(
                    challenger.test_error, split, decision.reason, decision.promoted, run_id
                ),
            )
            _record(name, decision, paths.out, lineage)
    return decision
