"""A real MLflow tracking server for tests: a subprocess on a free local port.

    with mlflow_server(tmp_path / "mlflow") as server:
        client = MlflowClient(server.uri)

The store (``mlflow.db`` and ``artifacts/``) lives in the folder given, so a second server
started on the same folder (and port) sees the same runs, as after a crash and restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

STARTUP_TIMEOUT_S = 90.0  # About 6 s on 2 idle cores; much more while tests compete for them.


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class MlflowServer:
    """A running ``mlflow server``: its URI, store folder and process (a group leader)."""

    uri: str
    port: int
    store: Path
    process: subprocess.Popen

    @property
    def backend_uri(self) -> str:
        """The server's SQLite store, for a client that reads it directly."""
        return f"sqlite:///{(self.store / 'mlflow.db').as_posix()}"

    def kill(self) -> None:
        """Kill the server and its workers at once, as a crash would (SIGKILL)."""
        self._signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after 15 s)."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        # The uvicorn worker is a child in the same group; make sure none outlives the test.
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(
    store: Path,
    *,
    port: int | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
    backend: str | None = None,
    artifacts: str | None = None,
    env: dict[str, str] | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` on ``store`` and wait until ``/health`` answers.

    Artifacts are proxied by the server (``--artifacts-destination``), as on a shared
    server, so clients upload them over HTTP. The job runner MLflow starts by default (a
    handful of Huey processes for GenAI jobs) is switched off.

    Args:
        store: the folder of the log, and by default of ``mlflow.db`` and ``artifacts/``.
        port: the port; by default a free one.
        timeout_s: how long to wait for ``/health``.
        backend: the backend store URI instead of ``store/mlflow.db`` (e.g. PostgreSQL).
        artifacts: the artifact destination instead of ``store/artifacts`` (e.g. ``s3://``).
        env: variables for the server on top of this process's, less its ``MLFLOW_*`` and
            ``AWS_*`` ones.

    Raises:
        RuntimeError: the server exited or did not answer in time (with its log's tail).
    """
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    server_env.update(env or {}, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log_file = open(store / "server.log", "ab")  # noqa: SIM115 (the child writes to it)
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", backend or f"sqlite:///{(store / 'mlflow.db').as_posix()}"),
        *("--artifacts-destination", artifacts or str(store / "artifacts")),
    ]
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=server_env, start_new_session=True
    )
    log_file.close()
    server = MlflowServer(uri=uri, port=port, store=store, process=process)
    deadline = time.monotonic() + timeout_s
    while not _healthy(uri):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = (store / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server on port {port} did not start:\n{tail}")
        time.sleep(0.25)
    return server


@contextlib.contextmanager
def mlflow_server(store: Path, *, port: int | None = None) -> Iterator[MlflowServer]:
    """A server on ``store`` for the duration of the block."""
    server = start_mlflow_server(store, port=port)
    try:
        yield server
    finally:
        server.stop()
