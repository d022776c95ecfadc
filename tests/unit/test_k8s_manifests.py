"""deploy/k8s/ checked offline: core kinds against a pinned Kubernetes version's schema
(kubernetes-validate, strict: an unknown field is an error), TrainJobs against Kubeflow
Trainer's own API models (kubeflow-trainer-api), the Prefect work pool's base job template by
Prefect's own check and rendered into a Job, and the example TrainJob equal to what the
flow code builds."""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.templating import apply_values

from pipelines.trainjob import (
    RUN_TAGS_ENV,
    TrainJobRequest,
    TrainJobRequestError,
    train_command,
    trainjob_manifest,
)
from tests.support.project import REPO

K8S = REPO / "deploy" / "k8s"
# The Kubernetes version the manifests are checked against: the oldest Kubeflow Trainer v2.3
# supports (docs/kubernetes.md).
KUBERNETES_VERSION = "1.31.0"
# Files of deploy/k8s/ that are not Kubernetes objects.
NOT_OBJECTS = {"kustomization.yaml", "prefect.yaml"}
EXAMPLE = TrainJobRequest(
    name="imagenet-resnet50-1",
    run="imagenet-resnet50",
    image="resnet-mlops:gpu",
    num_nodes=2,
    gpus_per_node=8,
    overrides=(
        *yaml.safe_load((REPO / "studies.yaml").read_text())["recipes"]["imagenet"],
        "train.model=resnet50",
    ),
)


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every object in deploy/k8s/*.yaml, with its file."""
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name not in NOT_OBJECTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def check_trainjob(obj: dict[str, Any]) -> None:
    """Raise AssertionError unless ``obj`` is a TrainJob Kubeflow Trainer's models take whole.

    The generated models type every field (pydantic, strict) but drop keys they do not know,
    so a misspelt field shows as a difference after the round trip.
    """
    model = TrainerV1alpha1TrainJob.from_dict(obj)
    assert model.api_version == "trainer.kubeflow.org/v1alpha1" and model.kind == "TrainJob"
    assert model.to_dict() == obj, "fields the TrainJob API does not have (misspelt?)"


def check_core(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the field unless ``obj`` fits the pinned strict schema."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        raise AssertionError(f"{obj['kind']}: {path}: {error.message}") from None


def test_every_manifest_validates_offline() -> None:
    kinds = set()
    for path, obj in manifests():
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("trainer.kubeflow.org/"):
            check_trainjob(obj)
        else:
            check_core(obj)
        assert obj["metadata"].get("namespace", "resnet-mlops") == "resnet-mlops", path
    # Nothing was passed over: each kind the docs apply is here and was checked.
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Secret",
        "Job",
        "TrainJob",
    }


def test_the_checks_catch_a_wrong_field() -> None:
    pvc = next(obj for _, obj in manifests() if obj["kind"] == "PersistentVolumeClaim")
    with pytest.raises(AssertionError, match="spec.accessModes"):
        check_core({**pvc, "spec": {**pvc["spec"], "accessModes": "ReadWriteMany"}})
    with pytest.raises(AssertionError, match="spec: Additional properties"):
        check_core({**pvc, "spec": {**pvc["spec"], "accesModes": ["ReadWriteMany"]}})
    job = trainjob_manifest(EXAMPLE)
    misspelt = json.loads(json.dumps(job))
    misspelt["spec"]["trainer"]["numNode"] = misspelt["spec"]["trainer"].pop("numNodes")
    with pytest.raises(AssertionError, match="misspelt"):
        check_trainjob(misspelt)
    mistyped = json.loads(json.dumps(job))
    mistyped["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(ValueError, match="num_nodes|numNodes"):
        check_trainjob(mistyped)


def test_the_example_trainjob_is_what_the_flow_code_builds() -> None:
    (example,) = [obj for _, obj in manifests() if obj["kind"] == "TrainJob"]
    assert example == trainjob_manifest(EXAMPLE)
    trainer = example["spec"]["trainer"]
    assert example["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    # torchrun's variables are the runtime's: Kubeflow Trainer refuses a TrainJob that sets them.
    assert not [e for e in trainer["env"] if e["name"].startswith("PET_")]
    # The Prefect deployment trains the same recipe.
    deployment = yaml.safe_load((K8S / "prefect.yaml").read_text())["deployments"][0]
    assert tuple(deployment["parameters"]["overrides"]) == EXAMPLE.overrides


def test_the_trainjob_command_is_resnet_train_with_its_own_options() -> None:
    import typer.main

    from resnet_mlops.cli import app
    from resnet_mlops.lineage import RUN_TAGS_ENV as TRACKING_RUN_TAGS_ENV

    train = typer.main.get_command(app).commands["train"]
    known = {opt for param in train.params for opt in getattr(param, "opts", [])}
    command = train_command(EXAMPLE)
    assert command[:2] == ["resnet", "train"] and "--auto-resume" in command
    options = {part for part in command if part.startswith("--")}
    assert options <= known, options - known
    # Every path the run writes is on the shared volume, under the run's folder.
    for option in ("--out", "--metrics", "--history"):
        assert command[command.index(option) + 1].startswith("/mnt/shared/runs/imagenet-resnet50/")
    assert RUN_TAGS_ENV == TRACKING_RUN_TAGS_ENV


def test_a_bad_request_is_one_line_naming_the_field() -> None:
    for changes, field in (
        ({"name": "ImageNet_Run"}, "name"),
        ({"run": "x" * 41}, "run"),
        ({"num_nodes": 0}, "num_nodes"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"image": ""}, "image"),
        ({"data": "../etc"}, "data"),
    ):
        with pytest.raises(TrainJobRequestError) as caught:
            TrainJobRequest(**{"name": "a", "run": "b", "image": "i", **changes})
        assert str(caught.value).startswith(f"{field}: ") and "\n" not in str(caught.value)


def test_a_cpu_trainjob_asks_for_no_gpu() -> None:
    job = trainjob_manifest(
        TrainJobRequest(name="smoke-1", run="smoke", image="i", gpus_per_node=0)
    )
    check_trainjob(job)
    trainer = job["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in json.dumps(job)


def test_the_flow_role_allows_what_the_flow_calls() -> None:
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for _, obj in manifests()}
    role = objects["Role", "resnet-flow-trainjobs"]
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("create", "get", "delete")}
    needed |= {("", "pods", "list"), ("", "pods/log", "get")}
    assert needed <= allowed
    binding = objects["RoleBinding", "resnet-flow-trainjobs"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "resnet-flow", "namespace": "resnet-mlops"}
    ]
    # The training pods' account exists and carries no token.
    train = objects["ServiceAccount", EXAMPLE.service_account]
    assert train["automountServiceAccountToken"] is False
    claim = objects["PersistentVolumeClaim", EXAMPLE.volume_claim]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kustomization_applies_the_setup_and_no_template() -> None:
    resources = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).is_file() for name in resources)
    assert set(resources) == {"namespace.yaml", "rbac.yaml", "pvc.yaml"}


def test_the_secrets_are_placeholders_and_a_filled_copy_is_ignored() -> None:
    secrets = [obj for _, obj in manifests() if obj["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        EXAMPLE.secrets.mlflow,
        EXAMPLE.secrets.s3,
    }
    values = [value for s in secrets for value in s["stringData"].values()]
    assert values and all(value.startswith("CHANGE-ME") for value in values)
    # Every key a training pod reads from them is in the template.
    keys = {(s["metadata"]["name"], key) for s in secrets for key in s["stringData"]}
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in trainjob_manifest(EXAMPLE)["spec"]["trainer"]["env"]
        if "valueFrom" in e
    }
    assert refs == keys
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/secrets.yaml"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/secrets.yaml is not git-ignored"


def rendered_flow_job(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job a kubernetes worker would create for a flow run, as far as Prefect's own
    templating takes it: the variables' defaults, the deployment's job variables and what
    the worker fills in (name, command), then ``env`` as the list Kubernetes wants (the
    worker's own conversion)."""
    defaults = {
        key: spec["default"]
        for key, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    values = {
        **defaults,
        **job_variables,
        "name": "resnet-k8s-train-flow",
        "command": "prefect flow-run execute",
    }
    config = apply_values(template["job_configuration"], values)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container["args"] = container["args"].split()
    return job


def test_the_work_pool_template_passes_prefect_and_renders_a_valid_job() -> None:
    template = json.loads((K8S / "work-pool.json").read_text())
    validate_base_job_template(template)  # what `prefect work-pool create` runs on the server
    deployment = yaml.safe_load((K8S / "prefect.yaml").read_text())["deployments"][0]
    job_variables = {**deployment["work_pool"]["job_variables"], "image": "registry/resnet:gpu"}
    assert set(job_variables) <= set(template["variables"]["properties"])
    job = rendered_flow_job(template, job_variables)
    check_core(job)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "resnet-flow"
    assert job["metadata"]["namespace"] == "resnet-mlops"
    assert pod["containers"][0]["image"] == "registry/resnet:gpu"
    # Prefect's own default template puts two Job fields into the pod spec; this one does not.
    assert not {"completions", "parallelism"} & set(pod)


def test_the_deployment_calls_the_flow_with_its_parameters() -> None:
    from pipelines.k8s_train import k8s_train

    config = yaml.safe_load((K8S / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    module, name = deployment["entrypoint"].split(":")
    assert (REPO / module).is_file() and name == k8s_train.fn.__name__
    accepted = set(inspect.signature(k8s_train.fn).parameters)
    assert set(deployment["parameters"]) <= accepted
    assert deployment["work_pool"]["name"] == "resnet-k8s"
    assert config["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/workspace"}}
    ]
