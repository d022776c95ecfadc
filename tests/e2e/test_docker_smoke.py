"""The smoke test's stack (docker/compose.smoke.yaml, docker/smoke/) without a Docker engine.

``docker/smoke.sh`` runs the whole stack for real on a Docker engine (docs/docker.md); it is
far too slow for CI. Here: the override merges onto ``docker/compose.yaml`` and changes only
what its header says it changes, its stand-in Dockerfiles pass hadolint and run as non-root,
and the stand-in postgres entrypoint, run on Debian's PostgreSQL outside a container, creates
what the stack's services connect to.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.support.hadolint import assert_hadolint_passes
from tests.support.mlflow_server import free_port
from tests.support.project import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
OVERRIDE = DOCKER / "compose.smoke.yaml"
ENV_EXAMPLE = REPO / ".env.example"
ENTRYPOINT = DOCKER / "smoke" / "postgres-entrypoint.sh"
SMOKE_DOCKERFILES = sorted((DOCKER / "smoke").glob("*Dockerfile"))
CHECK = "/opt/stack/check-secrets.sh"


def _config(*files: Path, env_file: Path) -> dict:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (.ci/run does)"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    command = [binary, "--env-file", str(env_file), "--profile", "train"]
    for file in files:
        command += ["-f", str(file)]
    result = subprocess.run(
        [*command, "config"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """The real stack and the smoke stack, both resolved with .env.example's settings."""
    tmp = tmp_path_factory.mktemp("smoke")
    env_file = tmp / "smoke.env"
    workspace = tmp / "workspace"
    env_file.write_text(
        f"{ENV_EXAMPLE.read_text()}\nSMOKE_WORKSPACE={workspace}\nSMOKE_DATA={tmp / 'data'}\n"
    )
    real = _config(COMPOSE, env_file=env_file)
    smoke = _config(COMPOSE, OVERRIDE, env_file=env_file)
    return real["services"], smoke["services"], workspace


def test_the_override_swaps_images_and_the_workspace_only(stacks: tuple[dict, dict, Path]) -> None:
    real, smoke, workspace = stacks
    assert set(smoke) == set(real)
    for name, service in smoke.items():
        # Every image is a smoke build: the real stack's own tags are never overwritten.
        assert service["image"].startswith("resnet-smoke/"), name
        # The same wiring: dependencies, environment (so the same passwords), ports, restarts.
        for key in ("depends_on", "environment", "ports", "restart", "user", "profiles"):
            assert service.get(key) == real[name].get(key), (name, key)
    for name in ("prefect-worker", "trainer"):
        volumes = smoke[name]["volumes"]
        assert f"{workspace}:/workspace:rw" in volumes, name
        assert not any(v.startswith(f"{REPO}:") for v in volumes), "the checkout itself"
    # MLflow runs the real image's Dockerfile and command, on the stand-ins by their names.
    assert smoke["mlflow"]["command"] == real["mlflow"]["command"]
    assert smoke["mlflow"]["build"] == real["mlflow"]["build"]


def test_the_override_keeps_every_password_check(stacks: tuple[dict, dict, Path]) -> None:
    real, smoke, _ = stacks
    for name, service in real.items():
        entrypoint = service.get("entrypoint") or []
        if CHECK not in entrypoint:
            continue
        checked = entrypoint[2 : entrypoint.index("--")]
        replaced = smoke[name]["entrypoint"]
        assert replaced[:2] == ["/bin/sh", CHECK], name
        assert replaced[2 : replaced.index("--")] == checked, name


def test_the_override_states_its_differences() -> None:
    header = OVERRIDE.read_text().split("\nservices:")[0]
    for service in ("postgres", "minio", "prefect-server", "prefect-worker"):
        assert f"# - {service}" in header, service
    assert "minio-init" in header
    for difference in ("PostgreSQL 15", "moto", "CPU image", "deploy", "/workspace", "torch"):
        assert difference in header, difference


@pytest.mark.parametrize("dockerfile", SMOKE_DOCKERFILES, ids=lambda p: p.name)
def test_stand_in_dockerfiles_pass_hadolint_and_run_as_non_root(dockerfile: Path) -> None:
    assert_hadolint_passes(dockerfile)
    users = re.findall(r"(?m)^USER (\d+):(\d+)$", dockerfile.read_text())
    assert users and all(int(uid) > 0 for uid, _ in users), "runs as root"
    # Its base is a build argument with an upstream default, as in the stack's own Dockerfiles.
    assert re.search(r"(?m)^ARG (BASE_IMAGE|PYTHON_IMAGE)=\S+:\S+$", dockerfile.read_text())


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    assert found, "PostgreSQL is missing: apt-get install postgresql (.ci/run does)"
    return Path(found[-1]).parent


@pytest.mark.slow
def test_the_postgres_entrypoint_creates_what_the_stack_connects_to() -> None:
    """The stand-in entrypoint with compose.yaml's settings and init script, as the container
    would run it: then a password login over TCP reaches both databases, and a wrong one fails.
    """
    import psycopg2

    bin_dir = _postgres_bin()
    # PostgreSQL refuses root: the cluster belongs to the package's postgres user, as in the image.
    as_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="resnet-entrypoint-"))
    user = {"user": as_user.pw_uid, "group": as_user.pw_gid} if as_user else {}
    if as_user:
        os.chown(folder, as_user.pw_uid, as_user.pw_gid)
    init_dir = folder / "initdb.d"
    init_dir.mkdir()
    shutil.copy(DOCKER / "postgres" / "init-databases.sh", init_dir / "10-databases.sh")
    port = free_port()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(folder),
        "PGDATA": str(folder / "data"),
        # Sockets in the folder, on a port of its own: nothing shared with other servers here.
        "PGHOST": str(folder),
        "PGPORT": str(port),
        "POSTGRES_USER": "resnet",
        "POSTGRES_PASSWORD": "s3cret-test",
        "POSTGRES_DB": "mlflow",
        "POSTGRES_INITDB_DIR": str(init_dir),
    }
    command = ["sh", str(ENTRYPOINT), "postgres", "-k", str(folder)]
    command += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    server = subprocess.Popen(
        command,
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **user,
    )
    try:
        connect = {"host": "127.0.0.1", "port": port, "user": "resnet", "connect_timeout": 3}
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(dbname="prefect", password="s3cret-test", **connect).close()
                break
            except psycopg2.OperationalError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server never accepted the password"
                time.sleep(0.5)
        connection = psycopg2.connect(dbname="mlflow", password="s3cret-test", **connect)
        try:
            with connection.cursor() as cursor:
                cursor.execute("select datname from pg_database")
                names = {row[0] for row in cursor.fetchall()}
        finally:
            connection.close()
        assert {"mlflow", "prefect"} <= names
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(dbname="mlflow", password="wrong", **connect)
    finally:
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            output = server.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
        shutil.rmtree(folder, ignore_errors=True)
    # The password never reaches the log, and the init script ran once.
    assert "s3cret-test" not in output
    assert output.count("docker-entrypoint.sh: running ") == 1 and "10-databases.sh" in output
