"""Submit a TrainJob and follow it to its end, with the official ``kubernetes`` client.

No Prefect here (``pipelines/k8s_train.py`` wraps these in tasks). Every error a user can
cause (no Kubeflow Trainer, no permission, a name in use, a failed or stuck job, a timeout)
is a :class:`TrainJobError` whose message is one line naming the TrainJob.

The ``kubeflow`` SDK's ``TrainerClient`` was not used: it builds its own command around a
Python function or a built-in trainer, while this project's job is a fixed ``resnet train``
command; what it would add here is a wrapper around the same ``CustomObjectsApi`` calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from pipelines.trainjob import (
    GROUP,
    JOBSET_LABEL,
    NODE,
    OWNER_LABEL,
    PLURAL,
    RUN_LABEL,
    VERSION,
    rank0_selector,
)

# The TrainJob's condition types (trainer.kubeflow.org/v1alpha1), in the order they decide.
FAILED, COMPLETE, SUSPENDED = "Failed", "Complete", "Suspended"
RUNNING, PENDING = "Running", "Pending"
# Container waiting reasons that do not go away by waiting: a wrong image name or tag, a
# registry it may not pull from, a Secret or key that does not exist. The TrainJob itself
# shows none of them, so left alone it would wait until the timeout.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
EPOCH = datetime.fromtimestamp(0, UTC)
REQUEST_TIMEOUT_S = 30.0  # per API call: a silent API server must not hang the flow
# What an API error most likely means when creating or listing TrainJobs, by HTTP status.
CREATE_HINTS = {
    403: "the flow's service account needs the Role in deploy/k8s/rbac.yaml",
    404: "is Kubeflow Trainer installed and the namespace created? (docs/kubernetes.md)",
    409: "a TrainJob of that name exists: delete it, or wait for it to be removed",
    422: "the cluster's Kubeflow Trainer rejected the object: check its version (v2.3)",
}


class TrainJobError(RuntimeError):
    """A TrainJob could not be created, failed, got stuck or ran out of time (one line)."""


@dataclass(frozen=True)
class JobState:
    """Where a TrainJob stands: a condition that is true, or Running/Pending without one."""

    phase: str
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        """``Failed (BackoffLimitExceeded: ...)``, or just the phase."""
        detail = ": ".join(part for part in (self.reason, self.message) if part)
        return f"{self.phase} ({detail})" if detail else self.phase


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split())


def job_state(trainjob: Mapping[str, Any]) -> JobState:
    """The state a TrainJob object's ``status`` shows (Failed before Complete, then
    Suspended; without any, Running while a child Job is active, else Pending)."""
    status = trainjob.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for phase in (FAILED, COMPLETE, SUSPENDED):
        if phase in true:
            condition = true[phase]
            return JobState(
                phase, condition.get("reason") or "", one_line(condition.get("message") or "")
            )
    if any((job.get("active") or 0) > 0 for job in status.get("jobsStatus") or []):
        return JobState(RUNNING)
    return JobState(PENDING)


def _api_message(error: ApiException) -> str:
    """The API server's own message (its Status body), else the HTTP reason."""
    try:
        message = json.loads(error.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return one_line(str(message or error.reason or f"HTTP {error.status}"))


def create_trainjob(api_client: ApiClient, body: Mapping[str, Any]) -> dict[str, Any]:
    """Create the TrainJob ``body`` in its namespace; the object as the API server stored it.

    Raises:
        TrainJobError: the API server refused it (the message says why and what to check).
    """
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        return CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, dict(body), _request_timeout=REQUEST_TIMEOUT_S
        )
    except (ApiException, HTTPError) as error:
        raise _refused(f"create TrainJob {namespace}/{name}", api_client, error) from None


def _refused(action: str, api_client: ApiClient, error: Exception) -> TrainJobError:
    """The one-line error for an API call that could not be made or was refused."""
    host = api_client.configuration.host
    if isinstance(error, ApiException):
        hint = CREATE_HINTS.get(error.status)
        return TrainJobError(
            f"cannot {action} at {host}: {_api_message(error)}" + (f" ({hint})" if hint else "")
        )
    return TrainJobError(f"cannot {action}: no Kubernetes API at {host} ({one_line(str(error))})")


def running_trainjob(api_client: ApiClient, namespace: str, run: str, owner: str) -> str | None:
    """The TrainJob of ``run`` that ``owner`` created and that has not ended, if any.

    A flow run that Prefect rescheduled (its pod was evicted) finds the job it created and
    follows it again, rather than starting a second writer of the same run folder.

    Raises:
        TrainJobError: another owner's TrainJob of ``run`` has not ended: two jobs cannot
            write one run folder (the second would stop on its lock); or the API refused the
            list (no Kubeflow Trainer, no permission).
    """
    try:
        listed = CustomObjectsApi(api_client).list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=f"{RUN_LABEL}={run}",
            _request_timeout=REQUEST_TIMEOUT_S,
        )
    except (ApiException, HTTPError) as error:
        raise _refused(
            f"list the TrainJobs of run {run} in {namespace}", api_client, error
        ) from None
    for job in listed.get("items") or []:
        state = job_state(job)
        if state.phase in (COMPLETE, FAILED):
            continue
        name = job["metadata"]["name"]
        if owner and (job["metadata"].get("labels") or {}).get(OWNER_LABEL) == owner:
            return name
        raise TrainJobError(
            f"run {run} already has TrainJob {namespace}/{name} ({state.describe()}): wait for "
            f"it to end, or delete it (kubectl -n {namespace} delete trainjob {name}), or use "
            "another run name"
        )
    return None


def delete_trainjob(api_client: ApiClient, namespace: str, name: str) -> None:
    """Delete a TrainJob this flow created, with its pods; one already gone is fine."""
    try:
        CustomObjectsApi(api_client).delete_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            propagation_policy="Foreground",
            _request_timeout=REQUEST_TIMEOUT_S,
        )
    except ApiException as error:
        if error.status != 404:
            raise


def stuck_pods(api_client: ApiClient, namespace: str, name: str) -> dict[str, str]:
    """The TrainJob's pods whose container waits for a reason that waiting will not fix,
    as ``pod name -> "reason: message"``."""
    pods = CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"{JOBSET_LABEL}={name}", _request_timeout=REQUEST_TIMEOUT_S
    )
    stuck = {}
    for pod in pods.items:
        statuses = [
            *(pod.status.init_container_statuses or []),
            *(pod.status.container_statuses or []),
        ]
        for status in statuses:
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in STUCK_REASONS:
                stuck[pod.metadata.name] = one_line(f"{waiting.reason}: {waiting.message or ''}")
    return stuck


@dataclass(frozen=True)
class FollowLimits:
    """How long to follow a TrainJob and how often to look.

    Attributes:
        timeout_s: Give up (and delete the job) after this long without an end.
        poll_s: Seconds between two looks at the job.
        stuck_s: Give up once a pod has been stuck (see :data:`STUCK_REASONS`) this long.
    """

    timeout_s: float
    poll_s: float = 30.0
    stuck_s: float = 600.0


def follow_trainjob(
    api_client: ApiClient,
    namespace: str,
    name: str,
    limits: FollowLimits,
    log: Callable[[str], None],
) -> JobState:
    """Poll the TrainJob until it completes; log each change of state.

    A suspended job (``spec.suspend``, or Kueue waiting for quota) is waited for: it resumes
    on its own. API errors that pass (a restarting API server, a dropped connection) are
    logged and retried until the timeout.

    Returns:
        The Complete state.

    Raises:
        TrainJobError: it failed, was deleted, had a pod stuck for ``limits.stuck_s``, or did
            not end within ``limits.timeout_s``; for the last two the job is deleted (its
            checkpoint stays on the shared volume).
    """
    api = CustomObjectsApi(api_client)
    job = f"TrainJob {namespace}/{name}"
    start = time.monotonic()
    state = JobState(PENDING)
    stuck_since: dict[str, float] = {}
    while True:
        try:
            obj = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if error.status == 404:
                raise TrainJobError(f"{job} was deleted before it ended") from None
            if error.status < 500 and error.status != 429:
                raise TrainJobError(f"cannot read {job}: {_api_message(error)}") from None
            log(f"{job}: the API server answered {error.status}; trying again")
        except HTTPError as error:
            log(f"{job}: the API server is unreachable ({one_line(str(error))}); trying again")
        else:
            new = job_state(obj)
            if new != state:
                log(f"{job}: {new.describe()}")
            state = new
            if state.phase == COMPLETE:
                return state
            if state.phase == FAILED:
                detail = ": ".join(p for p in (state.reason, state.message) if p)
                raise TrainJobError(f"{job} failed: {detail or 'no reason given'}")
            if state.phase != SUSPENDED:
                stuck = _stuck_too_long(api_client, namespace, name, stuck_since, limits, log)
                if stuck:
                    delete_trainjob(api_client, namespace, name)
                    raise TrainJobError(f"{job}: {stuck} (the TrainJob was deleted)")
        if time.monotonic() - start >= limits.timeout_s:
            delete_trainjob(api_client, namespace, name)
            raise TrainJobError(
                f"{job} did not end within {limits.timeout_s:g} s (last {state.describe()}); "
                "it was deleted, its checkpoint stays on the shared volume"
            )
        time.sleep(limits.poll_s)


def _stuck_too_long(
    api_client: ApiClient,
    namespace: str,
    name: str,
    since: dict[str, float],
    limits: FollowLimits,
    log: Callable[[str], None],
) -> str | None:
    """Why a pod of the job has been stuck for ``limits.stuck_s``, or None.

    ``since`` (pod -> when first seen stuck) is updated in place between polls. A failure
    to list the pods is logged and ignored: it is only a shortcut past the timeout.
    """
    try:
        stuck = stuck_pods(api_client, namespace, name)
    except (ApiException, HTTPError) as error:
        log(f"TrainJob {namespace}/{name}: cannot list its pods ({one_line(str(error))})")
        return None
    now = time.monotonic()
    for pod in list(since):
        if pod not in stuck:
            del since[pod]
    for pod, why in stuck.items():
        if pod not in since:
            log(f"TrainJob {namespace}/{name}: pod {pod} waits: {why}")
            since[pod] = now
        if now - since[pod] >= limits.stuck_s:
            return f"pod {pod} stuck for {now - since[pod]:.0f} s: {why}"
    return None


def rank0_log_tail(api_client: ApiClient, namespace: str, name: str, lines: int = 30) -> list[str]:
    """The last ``lines`` lines of node rank 0's training container (its newest pod).

    Raises:
        ApiException: the pods or the log could not be read.
    """
    core = CoreV1Api(api_client)
    pods = core.list_namespaced_pod(
        namespace, label_selector=rank0_selector(name), _request_timeout=REQUEST_TIMEOUT_S
    ).items
    if not pods:
        return []
    newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp or EPOCH)
    # The raw response, decoded here: kubernetes 36 returns the repr of the bytes ("b'...'")
    # from read_namespaced_pod_log (kubernetes-client/python#2596).
    response = core.read_namespaced_pod_log(
        newest.metadata.name,
        namespace,
        container=NODE,
        tail_lines=lines,
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT_S,
    )
    return response.data.decode(errors="replace").splitlines()
