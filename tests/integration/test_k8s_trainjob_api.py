"""The TrainJob client without a cluster: the real ``kubernetes`` client against a local
server on 127.0.0.1 that speaks the few API endpoints it calls (tests/kube_api.py). What it
sends (path and body), and what it makes of a failed, stuck, suspended or endless job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, Configuration

from pipelines.trainjob import TrainJobRequest, rank0_selector, trainjob_manifest
from pipelines.trainjob_api import (
    FollowLimits,
    TrainJobError,
    create_trainjob,
    follow_trainjob,
    job_state,
    rank0_log_tail,
    running_trainjob,
)
from tests.support.kube_api import TRAINJOBS, KubeApi, condition, kube_api, pod
from tests.support.mlflow_server import free_port

NS = "resnet-mlops"
REQUEST = TrainJobRequest(
    name="imagenet-resnet50-a1b2c3",
    run="imagenet-resnet50",
    image="registry.example.org/resnet-mlops:gpu",
    num_nodes=2,
    gpus_per_node=8,
    overrides=("dataset=imagenet", "train.model=resnet50"),
)
NAME = REQUEST.name
FAST = FollowLimits(timeout_s=10.0, poll_s=0.01, stuck_s=600.0)
RUNNING = {
    "jobsStatus": [
        {"name": "node", "active": 1, "ready": 0, "failed": 0, "succeeded": 0, "suspended": 0}
    ]
}


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with kube_api() as server:
        yield server


@pytest.fixture
def client(api: KubeApi) -> Iterator[ApiClient]:
    with ApiClient(Configuration(host=api.url)) as client:
        yield client


def test_create_posts_the_trainjob_to_its_namespace(api: KubeApi, client: ApiClient) -> None:
    body = trainjob_manifest(REQUEST)
    created = create_trainjob(client, body)
    (request,) = api.requests
    assert request.method == "POST"
    assert request.path == TRAINJOBS.format(ns=NS)
    assert request.body == body
    assert created["metadata"]["uid"] == f"uid-{NAME}"


@pytest.mark.parametrize(
    ("code", "reason", "hint"),
    [
        (409, "AlreadyExists", "a TrainJob of that name exists"),
        (404, "NotFound", "is Kubeflow Trainer installed"),
        (403, "Forbidden", "deploy/k8s/rbac.yaml"),
    ],
)
def test_a_refused_create_is_one_line_with_the_servers_reason(
    api: KubeApi, client: ApiClient, code: int, reason: str, hint: str
) -> None:
    api.create_error = (code, reason, f'trainjobs "{NAME}" says\n{reason}')
    with pytest.raises(TrainJobError) as caught:
        create_trainjob(client, trainjob_manifest(REQUEST))
    message = str(caught.value)
    assert message.startswith(f"cannot create TrainJob {NS}/{NAME} at {api.url}: ")
    assert f"says {reason}" in message and hint in message and "\n" not in message


def test_a_cluster_without_kubeflow_trainer_is_one_line(api: KubeApi, client: ApiClient) -> None:
    api.trainer_installed = False
    hint = "(is Kubeflow Trainer installed and the namespace created? (docs/kubernetes.md))"
    with pytest.raises(TrainJobError) as listing:
        running_trainjob(client, NS, REQUEST.run, "flow-run-1")
    assert str(listing.value) == (
        f"cannot list the TrainJobs of run imagenet-resnet50 in {NS} at {api.url}: "
        f"the server could not find the requested resource {hint}"
    )
    with pytest.raises(TrainJobError) as creating:
        create_trainjob(client, trainjob_manifest(REQUEST))
    assert str(creating.value).startswith(f"cannot create TrainJob {NS}/{NAME} at {api.url}: ")


def test_no_api_server_is_one_line_naming_it() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    configuration = Configuration(host=host)
    configuration.retries = 0
    with ApiClient(configuration) as client, pytest.raises(TrainJobError) as caught:
        create_trainjob(client, trainjob_manifest(REQUEST))
    assert f"no Kubernetes API at {host}" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_failed_trainjob_raises_naming_it_and_the_reason(api: KubeApi, client: ApiClient) -> None:
    create_trainjob(client, trainjob_manifest(REQUEST))
    api.answer(
        {}, RUNNING, condition("Failed", "FailedJobs", "jobset failed:\nnode-1 exited with 1")
    )
    api.pods = [pod(f"{NAME}-node-0-0-x", {"jobset.sigs.k8s.io/jobset-name": NAME})]
    seen: list[str] = []
    with pytest.raises(TrainJobError) as caught:
        follow_trainjob(client, NS, NAME, FAST, seen.append)
    assert str(caught.value) == (
        f"TrainJob {NS}/{NAME} failed: FailedJobs: jobset failed: node-1 exited with 1"
    )
    assert seen == [
        f"TrainJob {NS}/{NAME}: Running",
        f"TrainJob {NS}/{NAME}: Failed (FailedJobs: jobset failed: node-1 exited with 1)",
    ]
    gets = [r for r in api.requests if r.method == "GET" and "/trainjobs/" in r.path]
    assert len(gets) == 3 and gets[0].path == f"{TRAINJOBS.format(ns=NS)}/{NAME}"
    # A job that failed by itself is left for inspection (kubectl describe).
    assert not [r for r in api.requests if r.method == "DELETE"]


def test_rank0s_log_tail_comes_from_its_newest_pod(api: KubeApi, client: ApiClient) -> None:
    labels = {
        "jobset.sigs.k8s.io/jobset-name": NAME,
        "jobset.sigs.k8s.io/replicatedjob-name": "node",
        "batch.kubernetes.io/job-completion-index": "0",
    }
    api.pods = [
        pod(f"{NAME}-node-0-0-abcde", labels),
        pod(f"{NAME}-node-0-1-fghij", {**labels, "batch.kubernetes.io/job-completion-index": "1"}),
    ]
    api.log = "\n".join(f"epoch {i}" for i in range(100))
    assert rank0_log_tail(client, NS, NAME, lines=3) == ["epoch 97", "epoch 98", "epoch 99"]
    listed, read = api.requests
    assert listed.path == f"/api/v1/namespaces/{NS}/pods"
    assert listed.query["labelSelector"] == rank0_selector(NAME)
    assert read.path == f"/api/v1/namespaces/{NS}/pods/{NAME}-node-0-0-abcde/log"
    assert (read.query["container"], read.query["tailLines"]) == ("node", "3")


def test_a_complete_trainjob_after_a_suspension_returns(api: KubeApi, client: ApiClient) -> None:
    create_trainjob(client, trainjob_manifest(REQUEST))
    api.answer(
        condition("Suspended", "Suspended", "waiting for quota"),
        RUNNING,
        condition("Complete", "Completed", "jobset completed"),
    )
    seen: list[str] = []
    state = follow_trainjob(client, NS, NAME, FAST, seen.append)
    assert state.phase == "Complete"
    assert seen[0] == f"TrainJob {NS}/{NAME}: Suspended (Suspended: waiting for quota)"


def test_a_pod_stuck_on_its_image_stops_the_wait_and_the_job(
    api: KubeApi, client: ApiClient
) -> None:
    create_trainjob(client, trainjob_manifest(REQUEST))
    api.pods = [
        pod(
            f"{NAME}-node-0-0-abcde",
            {"jobset.sigs.k8s.io/jobset-name": NAME},
            waiting=("ImagePullBackOff", 'Back-off pulling image "registry.example.org/x"'),
        )
    ]
    limits = FollowLimits(timeout_s=10.0, poll_s=0.01, stuck_s=0.05)
    with pytest.raises(TrainJobError) as caught:
        follow_trainjob(client, NS, NAME, limits, lambda line: None)
    message = str(caught.value)
    assert message.startswith(f"TrainJob {NS}/{NAME}: pod {NAME}-node-0-0-abcde stuck for ")
    assert "ImagePullBackOff: Back-off pulling image" in message
    assert message.endswith("(the TrainJob was deleted)")
    (deleted,) = [r for r in api.requests if r.method == "DELETE"]
    assert deleted.path == f"{TRAINJOBS.format(ns=NS)}/{NAME}"
    assert deleted.query["propagationPolicy"] == "Foreground"
    assert not api.trainjobs


def test_a_trainjob_past_its_timeout_is_deleted(api: KubeApi, client: ApiClient) -> None:
    create_trainjob(client, trainjob_manifest(REQUEST))
    api.answer(RUNNING)
    limits = FollowLimits(timeout_s=0.1, poll_s=0.02)
    with pytest.raises(TrainJobError, match=r"did not end within 0\.1 s \(last Running\)"):
        follow_trainjob(client, NS, NAME, limits, lambda line: None)
    assert not api.trainjobs


def test_a_trainjob_deleted_by_someone_else_is_an_error(client: ApiClient) -> None:
    with pytest.raises(TrainJobError, match=f"^TrainJob {NS}/{NAME} was deleted before it ended$"):
        follow_trainjob(client, NS, NAME, FAST, lambda line: None)


def test_the_state_comes_from_true_conditions_failed_first() -> None:
    both = condition("Complete", "Completed", "")["conditions"] + [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "late"}
    ]
    assert job_state({"status": {"conditions": both}}).phase == "Failed"
    resumed = [{"type": "Suspended", "status": "False", "reason": "Resumed"}]
    assert job_state({"status": {"conditions": resumed}}).phase == "Pending"
    assert job_state({"status": {"conditions": resumed, **RUNNING}}).phase == "Running"
    assert job_state({}).phase == "Pending"


def test_a_run_has_one_running_trainjob_and_its_owner_finds_it_again(
    api: KubeApi, client: ApiClient
) -> None:
    mine = TrainJobRequest(
        name="imagenet-resnet50-000001", run=REQUEST.run, image="i", owner="flow-run-1"
    )
    create_trainjob(client, trainjob_manifest(mine))
    api.answer(RUNNING)
    # The same flow run, rescheduled (its pod evicted), follows its own job again.
    assert running_trainjob(client, NS, REQUEST.run, "flow-run-1") == mine.name
    listed = api.requests[-1]
    assert listed.path == TRAINJOBS.format(ns=NS)
    assert listed.query["labelSelector"] == "resnet-mlops.io/run=imagenet-resnet50"
    # Another flow run of the same run is refused: two writers of one run folder.
    with pytest.raises(TrainJobError) as caught:
        running_trainjob(client, NS, REQUEST.run, "flow-run-2")
    assert str(caught.value).startswith(
        f"run imagenet-resnet50 already has TrainJob {NS}/{mine.name} (Running): wait for it"
    )
    assert running_trainjob(client, NS, "another-run", "flow-run-2") is None
    # An ended job is no obstacle.
    api.answer(condition("Complete", "Completed", ""))
    assert running_trainjob(client, NS, REQUEST.run, "flow-run-2") is None
