"""Where MLflow is (``MLFLOW_TRACKING_URI``, else the project's embedded ``mlflow.db``) and how
long its client may wait for the server: shared by tracking, the registry and the report."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from resnet_mlops.project import project_root

SQLITE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# MLflow's defaults (7 retries with backoff, 120 s timeout) hold a call for minutes when the
# server is down; the journal and `resnet sync` are our retry, so one short attempt is enough.
HTTP_LIMITS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow wraps a failed connection in a long message; the cause is what a user needs to read.
_CAUSES = {
    "Connection refused": "connection refused",
    "timed out": "timed out",
    "Name or service not known": "unknown host",
    "No route to host": "no route to host",
}


def default_tracking_uri(root: Path) -> str:
    """``sqlite:////abs/<root>/mlflow.db`` (absolute: a DVC experiment may run in a temporary
    copy of the repository), used when ``MLFLOW_TRACKING_URI`` is unset."""
    return f"sqlite:///{(project_root(root) / SQLITE_FILE).as_posix()}"


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, or the embedded store under ``root``; every command uses it."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """``<db folder>/mlartifacts/<experiment>`` for an embedded SQLite store, else None
    (MLflow would use ``./mlruns``, which for a DVC experiment is a temporary copy)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri.endswith(":memory:"):
        return None
    database = Path(tracking_uri.removeprefix(prefix)).resolve()
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (database.parent / ARTIFACTS_DIR / folder).as_uri()


@contextlib.contextmanager
def short_http_limits() -> Iterator[None]:
    """Set :data:`HTTP_LIMITS` for the block; values the user exported win."""
    added = [name for name in HTTP_LIMITS if name not in os.environ]
    os.environ.update({name: HTTP_LIMITS[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``Model.log`` has no URI argument) at ``uri`` for the block;
    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``: restoring it is enough."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # unsets it
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def is_permanent(error: BaseException) -> bool:
    """Whether the server answered and refused (4xx but 429): retrying cannot help."""
    if not isinstance(error, MlflowException):
        return False
    code = error.get_http_status_code()
    return 400 <= code < 500 and code != 429


def describe(error: BaseException) -> str:
    """A short reason for a failed MLflow call: a connection error's cause, or the first line."""
    text = str(error).strip()
    cause = next((short for needle, short in _CAUSES.items() if needle in text), None)
    return cause or (text.splitlines()[0][:300] if text else type(error).__name__)
