"""A few Kubernetes API endpoints on 127.0.0.1, for the real ``kubernetes`` client.

    with kube_api() as api:
        api.answer({}, condition("Failed", "FailedJobs", "..."))  # each GET of the TrainJob
        client = ApiClient(Configuration(host=api.url))

It speaks what the TrainJob flow calls: create, get, list (with a label selector) and delete
of ``trainer.kubeflow.org/v1alpha1`` trainjobs, the pod list (with a label selector) and a pod's
log, answering as the API server does (JSON objects, ``Status`` bodies on errors). Every
request is recorded (method, path, query, JSON body) for the tests to assert on.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs"


@dataclass
class Request:
    """One request the server got."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class KubeApi:
    """The server's state: stored TrainJobs, scripted answers and the requests seen.

    Attributes:
        url: The API server URL for ``Configuration(host=...)``.
        statuses: The ``status`` each successive GET of a TrainJob shows; the last repeats.
        create_error: ``(HTTP status, reason, message)`` to refuse the next create with.
        pods: Pod objects (JSON) the pod list returns, filtered by the label selector.
        log: The text a pod's log returns (``tailLines`` applied).
        trainer_installed: False answers every trainjobs request as a cluster without Kubeflow
            Trainer's CRDs does (404, "the server could not find the requested resource").
    """

    url: str = ""
    statuses: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    create_error: tuple[int, str, str] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""
    trainer_installed: bool = True
    trainjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _gets: int = 0

    def answer(self, *statuses: dict[str, Any]) -> None:
        """Show ``statuses`` to the next GETs of a TrainJob, one each; the last repeats."""
        self.statuses, self._gets = list(statuses), 0


def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    """A TrainJob ``status`` with one true condition."""
    return {
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``Status`` object, as the API server sends with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    pairs = [term.split("=", 1) for term in selector.split(",") if term]
    return all(labels.get(key) == value for key, value in pairs)


def _handler(state: KubeApi) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> tuple[list[str], dict[str, str], Any]:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.requests.append(Request(self.command, url.path, query, body))
            return url.path.strip("/").split("/"), query, body

        def _no_trainer(self, parts: list[str]) -> bool:
            """Answer as a cluster without the CRDs, if it is one; whether it answered."""
            if state.trainer_installed or parts[:2] != ["apis", "trainer.kubeflow.org"]:
                return False
            message = "the server could not find the requested resource"
            self._reply(404, status_body(404, "NotFound", message))
            return True

        def _not_found(self, what: str) -> None:
            self._reply(404, status_body(404, "NotFound", f"{what} not found"))

        def do_POST(self) -> None:
            parts, _, body = self._record()
            if self._no_trainer(parts):
                return None
            if (
                parts[:3] != ["apis", "trainer.kubeflow.org", "v1alpha1"]
                or parts[-1] != "trainjobs"
            ):
                return self._not_found("/" + "/".join(parts))
            if state.create_error:
                code, reason, message = state.create_error
                return self._reply(code, status_body(code, reason, message))
            namespace, name = parts[4], body["metadata"]["name"]
            stored = json.loads(json.dumps(body))
            stored["metadata"].update(uid=f"uid-{name}", creationTimestamp="2026-01-01T00:00:00Z")
            state.trainjobs[namespace, name] = stored
            self._reply(201, stored)

        def do_GET(self) -> None:
            parts, query, _ = self._record()
            if self._no_trainer(parts):
                return None
            if parts[:2] == ["api", "v1"] and parts[-1] == "pods":
                selector = query.get("labelSelector", "")
                items = [p for p in state.pods if _matches(p["metadata"]["labels"], selector)]
                return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
            if parts[:2] == ["api", "v1"] and parts[-1] == "log":
                lines = state.log.splitlines()[-int(query.get("tailLines", 10**9)) :]
                return self._reply(200, "".join(f"{line}\n" for line in lines), "text/plain")
            trainjobs = parts[:3] == ["apis", "trainer.kubeflow.org", "v1alpha1"]
            if trainjobs and len(parts) == 6:  # a list, with the status a GET would show now
                status = state.statuses[min(state._gets, len(state.statuses) - 1)]
                selector = query.get("labelSelector", "")
                items = [
                    {**job, "status": status}
                    for (namespace, _), job in state.trainjobs.items()
                    if namespace == parts[4] and _matches(job["metadata"]["labels"], selector)
                ]
                return self._reply(200, {"kind": "TrainJobList", "items": items})
            if trainjobs and len(parts) == 7:
                stored = state.trainjobs.get((parts[4], parts[6]))
                if stored is None:
                    return self._not_found(f'trainjobs.trainer.kubeflow.org "{parts[6]}"')
                status = state.statuses[min(state._gets, len(state.statuses) - 1)]
                state._gets += 1
                return self._reply(200, {**stored, "status": status})
            self._not_found("/" + "/".join(parts))

        def do_DELETE(self) -> None:
            parts, _, _ = self._record()
            if state.trainjobs.pop((parts[4], parts[6]), None) is None:
                return self._not_found(f'trainjobs.trainer.kubeflow.org "{parts[6]}"')
            self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@contextlib.contextmanager
def kube_api() -> Iterator[KubeApi]:
    """The server, on a free port of 127.0.0.1, for the ``with`` block."""
    state = KubeApi()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def pod(name: str, labels: dict[str, str], waiting: tuple[str, str] | None = None) -> dict:
    """A Pod object with one ``node`` container, waiting for ``(reason, message)`` if given."""
    state = (
        {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        if waiting
        else {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    )
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "resnet-mlops",
            "labels": labels,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "node", "image": "resnet-mlops:gpu"}]},
        "status": {
            "phase": "Pending" if waiting else "Running",
            "containerStatuses": [
                {
                    "name": "node",
                    "image": "resnet-mlops:gpu",
                    "imageID": "",
                    "ready": not waiting,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        },
    }
