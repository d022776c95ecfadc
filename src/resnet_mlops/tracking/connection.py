"""Where runs are stored, and how long MLflow's client may wait for the tracking server."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow

from resnet_mlops.project import project_root

SQLITE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# MLflow's defaults (7 retries with exponential backoff, 120 s timeout) can hold a call for
# minutes when the server is down. The tracker retries in its own background thread, so one
# short attempt per call is enough; each urllib3 retry would also print a warning of its own.
HTTP_LIMITS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def default_tracking_uri(root: Path) -> str:
    """The embedded store used when ``MLFLOW_TRACKING_URI`` is unset: ``<root>/mlflow.db``.

    The path is absolute because a DVC experiment may run in a temporary copy of the
    repository, and its runs must still land in the project's database.

    Args:
        root: The project root.

    Returns:
        ``sqlite:////abs/path/mlflow.db``.
    """
    return f"sqlite:///{(project_root(root) / SQLITE_FILE).as_posix()}"


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, or the embedded store under ``root`` (:func:`default_tracking_uri`).

    Every command that records or reads runs resolves its store here: ``resnet train``,
    ``evaluate``, ``register``, ``pull``, ``predict``, ``report`` and the Prefect flows.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where an embedded SQLite store keeps a new experiment's artifacts; None for a server.

    MLflow would put them under ``./mlruns`` of the current folder, which for a DVC
    experiment is a temporary copy that is deleted afterwards; ``<db folder>/mlartifacts``
    lives beside the database instead.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri.endswith(":memory:"):
        return None
    database = Path(tracking_uri.removeprefix(prefix)).resolve()
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (database.parent / ARTIFACTS_DIR / folder).as_uri()


@contextlib.contextmanager
def short_http_limits() -> Iterator[None]:
    """Apply :data:`HTTP_LIMITS` to this process's MLflow client while the block runs.

    MLflow reads them from the environment on every request. Values the user exported
    themselves win; only the ones set here are removed afterwards.
    """
    added = [name for name in HTTP_LIMITS if name not in os.environ]
    for name in added:
        os.environ[name] = HTTP_LIMITS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore what was there.

    ``mlflow.pytorch.log_model`` has no tracking URI argument; it uses the global one.
    """
    from mlflow.tracking._tracking_service import utils

    # Restore exactly what was there: the module's global (usually unset) and the variable.
    # Re-setting the variable's value as the global would pin it for the whole process.
    previous_global = utils._tracking_uri
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_global)  # type: ignore[arg-type]
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
