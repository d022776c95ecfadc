"""The Kubernetes training flow: ``resnet train`` on N nodes x M GPUs as a Kubeflow TrainJob.

    python -m pipelines.k8s_train --run imagenet-resnet50 --nodes 2 --gpus-per-node 8 \\
        --image registry.example.com/resnet-mlops:gpu --dataset imagenet --model resnet50

It checks the params (with the overrides) here first, creates the TrainJob
(:mod:`pipelines.trainjob`) and follows it to its end (:mod:`pipelines.trainjob_api`),
logging each change of state, the ``kubectl logs`` line that follows rank 0, and rank 0's
last lines at the end. Deployed on a Prefect ``kubernetes`` work pool by
``deploy/k8s/prefect.yaml``, it runs in a pod of the project's image with the service account
of ``deploy/k8s/rbac.yaml``; anywhere else it uses the kubeconfig (``KUBECONFIG`` or
``~/.kube/config``). See docs/kubernetes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from kubernetes import config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from urllib3.exceptions import HTTPError

from pipelines.trainjob import (
    NAME_MAX,
    TrainJobRequest,
    logs_command,
    run_folder,
    trainjob_manifest,
)
from pipelines.trainjob_api import (
    FollowLimits,
    TrainJobError,
    create_trainjob,
    follow_trainjob,
    one_line,
    rank0_log_tail,
    running_trainjob,
)
from pipelines.workspace import run_overrides, validate_params

SUFFIX_BYTES = 3  # the TrainJob is <run>-<6 hex digits>: one name per submission
TAIL_LINES = 30
# The MLflow run's tag holding the flow run's params.yaml changes, as the pipeline flow's.
OVERRIDES_TAG = "overrides"


def kube_client() -> ApiClient:
    """A client of the cluster: the pod's service account inside one, else the kubeconfig.

    Raises:
        TrainJobError: neither is there.
    """
    configuration = Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # Read now, not when the kubernetes package was imported (its default is).
            kubeconfig = os.environ.get("KUBECONFIG")
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except (config.ConfigException, OSError) as error:
            raise TrainJobError(
                "no Kubernetes credentials: not in a pod, and no usable kubeconfig "
                f"(KUBECONFIG or ~/.kube/config): {one_line(str(error))}"
            ) from None
    return ApiClient(configuration)


def trainjob_name(run: str) -> str:
    """A new TrainJob name for ``run``: the run's checkpoint outlives each job."""
    if len(run) > NAME_MAX - 1 - 2 * SUFFIX_BYTES:
        raise TrainJobError(f"run: {run!r} is longer than {NAME_MAX - 1 - 2 * SUFFIX_BYTES}")
    return f"{run}-{secrets.token_hex(SUFFIX_BYTES)}"


def check_world_size(batch_size: int, num_nodes: int, gpus_per_node: int) -> None:
    """``train.batch_size`` is the global batch: it must split evenly over the ranks.

    Raises:
        TrainJobError: it does not (one line naming the key and the ranks).
    """
    ranks = num_nodes * max(gpus_per_node, 1)
    if batch_size % ranks:
        raise TrainJobError(
            f"train.batch_size {batch_size} is not divisible by {ranks} ranks "
            f"({num_nodes} nodes x {max(gpus_per_node, 1)} processes)"
        )


@task(name="submit-trainjob", task_run_name="submit-trainjob", cache_policy=NO_CACHE)
def submit_trainjob(request: TrainJobRequest) -> str:
    """Create the TrainJob; its name."""
    logger = get_run_logger()
    with kube_client() as client:
        mine = running_trainjob(client, request.namespace, request.run, request.owner)
        if mine:
            logger.warning(
                "TrainJob %s/%s of this flow run is still on: following it", request.namespace, mine
            )
            return mine
        create_trainjob(client, trainjob_manifest(request))
    logger.info(
        "created TrainJob %s/%s: %d node(s) x %d GPU(s), image %s, run folder %s",
        request.namespace,
        request.name,
        request.num_nodes,
        request.gpus_per_node,
        request.image,
        run_folder(request.run),
    )
    logger.info("rank 0's output: %s", logs_command(request.namespace, request.name))
    return request.name


@task(name="follow-trainjob", task_run_name="follow-trainjob", cache_policy=NO_CACHE)
def follow(namespace: str, name: str, limits: FollowLimits) -> str:
    """Wait for the TrainJob to end; rank 0's last lines go to the log either way."""
    logger = get_run_logger()
    with kube_client() as client:
        try:
            state = follow_trainjob(client, namespace, name, limits, logger.info)
        finally:
            # Logs are a help, never the error: a failure to read them is only a warning.
            try:
                tail = rank0_log_tail(client, namespace, name, TAIL_LINES)
            except (ApiException, HTTPError) as error:
                logger.warning("cannot read rank 0's log: %s", one_line(str(error)))
            else:
                if tail:
                    logger.info("rank 0, last %d lines:\n%s", len(tail), "\n".join(tail))
    return state.describe()


@flow(name="resnet-k8s-train")
def k8s_train(
    run: str = "imagenet-resnet50",
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    image: str = "resnet-mlops:gpu",
    dataset: str | None = None,
    model: str | None = None,
    overrides: list[str] | None = None,
    namespace: str = "resnet-mlops",
    data: str = "data/preprocessed/imagenet",
    cpu_per_node: str = "8",
    memory_per_node: str = "64Gi",
    timeout_hours: float = 168.0,
    poll_seconds: float = 30.0,
) -> dict[str, Any]:
    """Train on N nodes x M GPUs as a Kubeflow Trainer v2 TrainJob, and wait for the end.

    Args:
        run: The run's folder on the shared volume (``runs/<run>/``). Run again with the same
            name and params, on any node count, to resume its checkpoint.
        num_nodes: Nodes, N.
        gpus_per_node: GPUs per node, M (one training process each); 0 trains on CPUs.
        image: The training image (``docker/Dockerfile``), pushed where the nodes pull from.
        dataset: ``dataset`` of ``params.yaml``; None keeps the image's.
        model: ``train.model``; None keeps the image's.
        overrides: More ``key=value`` changes of the image's ``params.yaml``; checked here
            before anything is created.
        namespace: The namespace of the TrainJob (deploy/k8s/namespace.yaml).
        data: The preprocessed data set, relative to the shared volume.
        cpu_per_node: CPU request of each node's pod.
        memory_per_node: Memory request and limit of each node's pod.
        timeout_hours: Give up (and delete the TrainJob) after this long.
        poll_seconds: Seconds between two looks at the TrainJob.

    Returns:
        The TrainJob, its final state, the run folder and the ``kubectl logs`` line.
    """
    logger = get_run_logger()
    changes = run_overrides(dataset, model, overrides)
    # A bad key fails here, before anything reaches the cluster; so does a batch the ranks
    # cannot share (resnet train would refuse it only once every node has started).
    tree = validate_params(Path("params.yaml"), changes)
    check_world_size(tree["train"]["batch_size"], num_nodes, gpus_per_node)
    flow_run_id = str(flow_run.get_id() or "")
    tags = {"prefect_flow_run": flow_run_id}
    if changes:
        tags[OVERRIDES_TAG] = json.dumps(changes)
    request = TrainJobRequest(
        name=trainjob_name(run),
        run=run,
        image=image,
        num_nodes=num_nodes,
        gpus_per_node=gpus_per_node,
        overrides=tuple(changes),
        namespace=namespace,
        cpu=cpu_per_node,
        memory=memory_per_node,
        data=data,
        run_tags=tags,
        owner=flow_run_id,
    )
    name = submit_trainjob(request)
    limits = FollowLimits(timeout_s=timeout_hours * 3600, poll_s=poll_seconds)
    state = follow(namespace, name, limits)
    logger.info("TrainJob %s/%s: %s", namespace, name, state)
    return {
        "trainjob": name,
        "namespace": namespace,
        "state": state,
        "run_folder": run_folder(run),
        "logs": logs_command(namespace, name),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.k8s_train``: run the flow here, against the kubeconfig's cluster."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.k8s_train", description=__doc__)
    parser.add_argument("--run", default="imagenet-resnet50")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--image", default="resnet-mlops:gpu")
    parser.add_argument("--dataset")
    parser.add_argument("--model")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--namespace", default="resnet-mlops")
    parser.add_argument("--timeout-hours", type=float, default=168.0)
    args = parser.parse_args(argv)
    state = k8s_train(
        run=args.run,
        num_nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        image=args.image,
        dataset=args.dataset,
        model=args.model,
        overrides=args.override,
        namespace=args.namespace,
        timeout_hours=args.timeout_hours,
        return_state=True,
    )
    if not state.is_completed():
        sys.exit(f"resnet-k8s-train: {state.message}")


if __name__ == "__main__":
    main()
