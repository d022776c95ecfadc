"""The Kubeflow Trainer v2 ``TrainJob`` that runs ``resnet train`` on N nodes x M GPUs.

A pure function of a :class:`TrainJobRequest`: no cluster, no Prefect. The job runs on the
``torch-distributed`` ClusterTrainingRuntime, which sets torchrun's ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` in each
node's ``node`` container; ``resnet train`` re-launches itself under torchrun from them
(``resnet_mlops.train.launch``), so the command is the one ``dvc.yaml`` runs. Everything a run
keeps (checkpoint, model, metrics, history) is on the shared volume under ``runs/<run>/``, so a
later TrainJob with the same run name and params resumes it on any number of nodes
(``--auto-resume``: the checkpoint holds nothing per rank).

``deploy/k8s/trainjob.yaml`` is this module's output for the ImageNet ResNet-50 example
(``tests/unit/test_k8s_manifests.py`` keeps the two equal).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
RUNTIME = "torch-distributed"  # Kubeflow Trainer's PyTorch ClusterTrainingRuntime
# The runtime's replicated job and its trainer container: the one that gets the PET_* variables.
NODE = "node"
# Who owns the runtime patch (Kubeflow Trainer keys patches by manager).
PATCH_MANAGER = "resnet-mlops.io/k8s-train"
GPU = "nvidia.com/gpu"
SHARED_MOUNT = "/mnt/shared"
# The image's user (docker/Dockerfile): fsGroup makes the shared volume writable for it.
IMAGE_UID = 1000
# resnet_mlops.lineage.RUN_TAGS_ENV, the MLflow run's extra tags; not imported, since that
# module loads MLflow, which the flow's pod otherwise never needs (a test pins it).
RUN_TAGS_ENV = "RESNET_RUN_TAGS"
# Pods are named <job>-node-<job index>-<pod index>: a DNS label of at most 63 characters.
NAME_MAX = 40
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# The labels JobSet and the Job controller put on each node's pod.
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
RUN_LABEL = "resnet-mlops.io/run"
# The Prefect flow run that created the TrainJob: a rescheduled flow run finds its own job.
OWNER_LABEL = "resnet-mlops.io/prefect-flow-run"


class TrainJobRequestError(ValueError):
    """A request that cannot make a valid TrainJob; the message names the field."""


@dataclass(frozen=True)
class Secrets:
    """The Secrets the training pods read (``deploy/k8s/secrets.example.yaml``)."""

    mlflow: str = "resnet-mlflow"  # MLFLOW_TRACKING_URI, and the optional username/password
    s3: str = "resnet-s3"  # optional: only for an MLflow server that does not proxy artifacts


@dataclass(frozen=True)
class TrainJobRequest:
    """One distributed ``resnet train`` as a TrainJob.

    Attributes:
        name: The TrainJob (unique in the namespace while it exists).
        run: The run's folder on the shared volume, ``runs/<run>/``: the same run name resumes
            the same checkpoint, whatever the node count.
        image: The project's training image (``docker/Dockerfile``), pushed to a registry.
        num_nodes: Training nodes (pods), N.
        gpus_per_node: GPUs (training processes) per node, M; 0 trains on CPUs, one process
            per node.
        overrides: ``key=value`` changes of ``params.yaml`` for ``resnet train``.
        namespace: Where the TrainJob runs.
        cpu: CPU request per node.
        memory: Memory request (and limit) per node.
        shm: Size of ``/dev/shm`` (DALI and NCCL share memory between one node's ranks).
        volume_claim: The shared PersistentVolumeClaim (ReadWriteMany) with data and runs.
        data: The preprocessed data set, relative to the shared volume.
        service_account: The training pods' ServiceAccount (no API access needed).
        secrets: The Secrets with MLflow and S3 settings.
        run_tags: Extra tags for the MLflow run (e.g. the Prefect flow run).
        owner: Who submits it (the Prefect flow run's id), a label of the TrainJob; "" for none.
    """

    name: str
    run: str
    image: str
    num_nodes: int = 1
    gpus_per_node: int = 1
    overrides: tuple[str, ...] = ()
    namespace: str = "resnet-mlops"
    cpu: str = "8"
    memory: str = "64Gi"
    shm: str = "16Gi"
    volume_claim: str = "resnet-shared"
    data: str = "data/preprocessed/imagenet"
    service_account: str = "resnet-train"
    secrets: Secrets = field(default_factory=Secrets)
    run_tags: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""

    def __post_init__(self) -> None:
        for key in ("name", "run"):
            value = getattr(self, key)
            if len(value) > NAME_MAX or not NAME_PATTERN.fullmatch(value):
                raise TrainJobRequestError(
                    f"{key}: {value!r} is not a name Kubernetes accepts here: lowercase "
                    f"letters, digits and '-', starting with a letter, at most {NAME_MAX} "
                    "characters"
                )
        if self.num_nodes < 1:
            raise TrainJobRequestError(f"num_nodes: expected 1 or more, got {self.num_nodes}")
        if self.gpus_per_node < 0:
            raise TrainJobRequestError(
                f"gpus_per_node: expected 0 or more, got {self.gpus_per_node}"
            )
        if not self.image:
            raise TrainJobRequestError("image: empty (the training image, pushed to a registry)")
        if self.data.startswith("/") or ".." in self.data.split("/"):
            raise TrainJobRequestError(f"data: {self.data!r} must lie inside the shared volume")


def run_folder(run: str) -> str:
    """The run's folder on the shared volume, inside the training pods."""
    return f"{SHARED_MOUNT}/runs/{run}"


def run_paths(run: str) -> dict[str, str]:
    """Where ``resnet train`` keeps a run on the shared volume, by its option."""
    root = run_folder(run)
    return {
        "--out": f"{root}/models",
        "--metrics": f"{root}/metrics/train.json",
        "--history": f"{root}/plots/train_history.json",
    }


def train_command(request: TrainJobRequest) -> list[str]:
    """``resnet train`` with the run's paths, ``--auto-resume`` and the overrides."""
    paths = {"--data": f"{SHARED_MOUNT}/{request.data}", **run_paths(request.run)}
    options = [part for option, path in paths.items() for part in (option, path)]
    # --auto-resume: a later job of the same run continues its checkpoint if the params, data
    # and training code are the same (the node count is not part of that key).
    return ["resnet", "train", "--params", "params.yaml", *options, "--auto-resume"] + list(
        request.overrides
    )


def _secret_env(name: str, secret: str, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def trainer_env(request: TrainJobRequest) -> list[dict[str, Any]]:
    """The training container's variables; PET_* are the runtime's (it refuses ours)."""
    env = [
        _secret_env("MLFLOW_TRACKING_URI", request.secrets.mlflow, optional=False),
        _secret_env("MLFLOW_TRACKING_USERNAME", request.secrets.mlflow, optional=True),
        _secret_env("MLFLOW_TRACKING_PASSWORD", request.secrets.mlflow, optional=True),
        _secret_env("AWS_ACCESS_KEY_ID", request.secrets.s3, optional=True),
        _secret_env("AWS_SECRET_ACCESS_KEY", request.secrets.s3, optional=True),
        _secret_env("MLFLOW_S3_ENDPOINT_URL", request.secrets.s3, optional=True),
    ]
    tags = {"trainjob": request.name, **request.run_tags}
    env.append({"name": RUN_TAGS_ENV, "value": json.dumps(tags, sort_keys=True)})
    return env


def node_resources(request: TrainJobRequest) -> dict[str, Any]:
    """Requests and limits of one node (pod); GPUs are requested whole, as limits."""
    requests = {"cpu": request.cpu, "memory": request.memory}
    limits = {"memory": request.memory}
    if request.gpus_per_node:
        requests[GPU] = limits[GPU] = str(request.gpus_per_node)
    return {"requests": requests, "limits": limits}


def pod_patch(request: TrainJobRequest) -> dict[str, Any]:
    """What the runtime's pods get on top of the runtime: volumes, user, GPU tolerations."""
    spec: dict[str, Any] = {
        "serviceAccountName": request.service_account,
        "securityContext": {"runAsNonRoot": True, "fsGroup": IMAGE_UID},
        "volumes": [
            {"name": "shared", "persistentVolumeClaim": {"claimName": request.volume_claim}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": request.shm}},
        ],
        "containers": [
            {
                "name": NODE,
                "volumeMounts": [
                    {"name": "shared", "mountPath": SHARED_MOUNT},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
    }
    if request.gpus_per_node:
        # GPU nodes are commonly tainted so that only pods that ask for GPUs land there.
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def trainjob_manifest(request: TrainJobRequest) -> dict[str, Any]:
    """The TrainJob object for ``request`` (what ``kubectl apply`` or the API takes)."""
    replicated_job = {
        "name": NODE,
        "template": {"spec": {"template": {"spec": pod_patch(request)}}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": request.name,
            "namespace": request.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "resnet-mlops",
                RUN_LABEL: request.run,
                **({OWNER_LABEL: request.owner} if request.owner else {}),
            },
        },
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "trainer": {
                "image": request.image,
                "command": train_command(request),
                "env": trainer_env(request),
                "numNodes": request.num_nodes,
                "numProcPerNode": max(request.gpus_per_node, 1),
                "resourcesPerNode": node_resources(request),
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {"spec": {"replicatedJobs": [replicated_job]}}
                    },
                }
            ],
        },
    }


def rank0_selector(name: str) -> str:
    """The label selector of node rank 0's pod of TrainJob ``name`` (the one that logs)."""
    return f"{JOBSET_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE},{INDEX_LABEL}=0"


def logs_command(namespace: str, name: str) -> str:
    """The ``kubectl`` line that follows rank 0's output."""
    return f"kubectl logs -n {namespace} -f -c {NODE} -l {rank0_selector(name)}"
