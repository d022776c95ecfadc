"""Sends a run's metrics and artifacts from a background thread, and keeps what fails.

The training loop only appends to a queue. The thread sends in MLflow-sized batches; when the
server does not answer it keeps everything, warns once per outage and retries with backoff
(at once when new data arrives). MLflow's own asynchronous logging is not used because it
drops a batch that fails.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
RETRY_WHILE_CLOSING_S = 0.5


def is_permanent(error: BaseException) -> bool:
    """Whether retrying cannot help: the server answered and rejected the request (4xx).

    A refused connection or a timeout surfaces as an MLflow error with a 5xx code; 429 (rate
    limited) is worth retrying too.
    """
    if not isinstance(error, MlflowException):
        return False
    code = error.get_http_status_code()
    return 400 <= code < 500 and code != 429


class Uploader:
    """A daemon thread that sends metrics and artifacts to one run.

    Args:
        client: The client to send with (used only by the thread).
        run_id: The run.
        where: How to name the server in messages.
        on_reconnect: Called from the thread when the server answers again after an outage.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        where: str,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._run_id = run_id
        self._where = where
        self._on_reconnect = on_reconnect
        self._metrics: deque[Metric] = deque()
        self._artifacts: deque[tuple[Path, str | None]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._abandoned = threading.Event()
        self._outage_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-uploader", daemon=True)
        self._thread.start()

    @property
    def in_outage(self) -> bool:
        """Whether the last attempt failed to reach the server."""
        return self._outage_since is not None

    def put_metrics(self, metrics: Iterable[Metric]) -> None:
        """Queue metric values; returns at once."""
        with self._lock:
            self._metrics.extend(metrics)
        self._wake.set()

    def put_artifact(self, local_path: Path, artifact_path: str | None) -> None:
        """Queue a file or folder for upload; it must stay in place until it is sent."""
        with self._lock:
            self._artifacts.append((local_path, artifact_path))
        self._wake.set()

    def close(self, timeout: float) -> tuple[int, list[tuple[Path, str | None]]]:
        """Send what is queued, waiting at most ``timeout`` seconds, then stop.

        Returns:
            The number of metric values and the artifacts that were not sent.
        """
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        # A request still in flight may yet succeed; it is counted as unsent, which is safe
        # because replaying a value that did arrive stores it once.
        self._abandoned.set()
        self._wake.set()
        with self._lock:
            return len(self._metrics), list(self._artifacts)

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        while not self._abandoned.is_set():
            self._wake.clear()
            if self._send_pending():
                delay = RETRY_FIRST_S
                if self._closing.is_set():
                    return
                self._wake.wait()
            else:
                self._wake.wait(RETRY_WHILE_CLOSING_S if self._closing.is_set() else delay)
                delay = min(2 * delay, RETRY_MAX_S)

    def _send_pending(self) -> bool:
        """Send everything queued; False when the server could not be reached."""
        while not self._abandoned.is_set():
            with self._lock:
                batch = list(itertools.islice(self._metrics, MAX_METRICS_PER_BATCH))
                artifact = self._artifacts[0] if self._artifacts and not batch else None
            if batch:
                send = functools.partial(
                    self._client.log_batch, self._run_id, metrics=batch, synchronous=True
                )
                what = f"{len(batch)} metric values"
            elif artifact is not None:
                send = functools.partial(self._upload, *artifact)
                what = f"artifact {artifact[0].name}"
            else:
                return True
            try:
                send()
            except Exception as error:
                if not is_permanent(error):
                    self._report_outage(error)
                    return False
                log.warning("MLflow rejected %s for run %s: %s", what, self._run_id, error)
            with self._lock:
                for _ in batch:
                    self._metrics.popleft()
                if artifact is not None:
                    self._artifacts.popleft()
            self._report_recovery()
        return False

    def _upload(self, local_path: Path, artifact_path: str | None) -> None:
        if local_path.is_dir():
            self._client.log_artifacts(self._run_id, str(local_path), artifact_path)
        else:
            self._client.log_artifact(self._run_id, str(local_path), artifact_path)

    def _report_outage(self, error: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "MLflow tracking server %s is not answering (%s); training goes on, metrics "
                "are kept and retried in the background",
                self._where,
                describe(error),
            )

    def _report_recovery(self) -> None:
        if self._outage_since is None:
            return
        seconds = time.monotonic() - self._outage_since
        self._outage_since = None
        log.info("MLflow tracking server %s answers again after %.0f s", self._where, seconds)
        if self._on_reconnect is not None:
            try:
                self._on_reconnect()
            except Exception as error:  # A side task must not stop the uploads.
                log.warning("after reconnecting to MLflow: %s", error)


# MLflow wraps a failed connection in a long message (URL, urllib3 pool, retry state); the
# cause is what a user needs to read.
_CAUSES = {
    "Connection refused": "connection refused",
    "timed out": "timed out",
    "Name or service not known": "unknown host",
    "No route to host": "no route to host",
}


def describe(error: BaseException) -> str:
    """A short reason for a failed MLflow call: the cause of a connection error, or the first
    line of the message (at most 300 characters)."""
    text = str(error).strip()
    for needle, cause in _CAUSES.items():
        if needle in text:
            return cause
    lines = text.splitlines()
    return lines[0][:300] if lines else type(error).__name__
