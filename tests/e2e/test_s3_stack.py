"""S3 for real, as the stack uses it: a DVC remote on S3 and MLflow's artifacts in S3.

MinIO has no package on the build machines, so ``moto``'s server, a real S3-API HTTP server,
stands in for it on 127.0.0.1. An ``mlflow server`` on PostgreSQL proxies its artifacts to a
bucket of it (``--artifacts-destination s3://mlflow/artifacts``, as docker/compose.yaml does with
MinIO); the pipeline runs with ``dvc repro`` against that server, ``dvc push`` / ``dvc pull`` go
through a ``dvc-s3`` remote configured as docs/docker-stack.md says (credentials in
``.dvc/config.local``), and a clean process pulls the champion through the server. The buckets
are then read with boto3: the artifacts and the DVC cache are really there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from resnet_mlops.params.base import apply_overrides, read_yaml
from tests.support.mlflow_server import MlflowServer, free_port, start_mlflow_server
from tests.support.postgres import Postgres
from tests.support.project import PARAMS, SHRINK, class_folders, copy_project, run

boto3 = pytest.importorskip("boto3", reason="pip install -e '.[dev]' (boto3, dvc-s3, moto)")

NAME = "s3-classifier"
# Credentials of the stand-in server (moto accepts any); the real ones live in docker/.env.
KEYS = {"AWS_ACCESS_KEY_ID": "resnet-test", "AWS_SECRET_ACCESS_KEY": "resnet-test-secret"}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the stack's two buckets; yields its endpoint URL."""
    folder = tmp_path_factory.mktemp("s3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "ab")  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while not _answers(endpoint):
            assert process.poll() is None and time.monotonic() < deadline, (
                folder / "moto.log"
            ).read_text()[-2000:]
            time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
        for bucket in ("mlflow", "resnet-mlops"):  # what docker/compose.yaml's minio-init makes
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": KEYS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": KEYS[
        "AWS_SECRET_ACCESS_KEY"
    ]}  # fmt: skip


def _objects(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def server(
    postgres: Postgres,
    s3: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MlflowServer]:
    """``mlflow server`` as docker/compose.yaml runs it: PostgreSQL, artifacts proxied to S3."""
    postgres.query("postgres", "CREATE DATABASE mlflow_s3")
    running = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-s3"),
        timeout_s=180,
        backend=postgres.uri("mlflow_s3", "postgresql+psycopg2"),
        artifacts="s3://mlflow/artifacts",
        env={**KEYS, "MLFLOW_S3_ENDPOINT_URL": s3},
    )
    yield running
    running.stop()


def _digests(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of each file of ``outputs`` (files or folders) under ``root``."""
    files = [
        path
        for output in outputs
        for path in ([root / output] if (root / output).is_file() else (root / output).rglob("*"))
        if path.is_file()
    ]
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(files)
    }


@pytest.mark.slow
def test_dvc_remote_and_mlflow_artifacts_on_s3(
    server: MlflowServer, s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = class_folders(tmp_path / "cifar-subset", {"train": 20, "test": 10})
    repo = copy_project(tmp_path / "repo")
    tree = apply_overrides(
        read_yaml(PARAMS),
        [f"prepare.cifar10.source={source}", *SHRINK, f"register.name={NAME}"],
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    run("git", "init", "-q", cwd=repo)
    # The S3 remote of docs/docker-stack.md: the bucket in .dvc/config, endpoint and keys in
    # config.local.
    dvc = (sys.executable, "-m", "dvc")
    run(*dvc, "remote", "add", "-d", "minio", "s3://resnet-mlops/dvc", cwd=repo)
    run(*dvc, "remote", "modify", "--local", "minio", "endpointurl", s3, cwd=repo)
    for option, variable in (("access_key_id", "AWS_ACCESS_KEY_ID"),
                             ("secret_access_key", "AWS_SECRET_ACCESS_KEY")):  # fmt: skip
        run(*dvc, "remote", "modify", "--local", "minio", option, KEYS[variable], cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "pipeline on S3", cwd=repo)
    committed = run("git", "show", "HEAD:.dvc/config", cwd=repo)
    assert "s3://resnet-mlops/dvc" in committed
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in committed and s3 not in committed
    assert "config.local" not in run("git", "ls-files", cwd=repo)

    # The stages track to the S3-backed server; nothing in this process's env names AWS keys,
    # so the artifacts can only reach the bucket through the server's proxy.
    for variable in (*KEYS, "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    run(*dvc, "repro", cwd=repo)
    run(*dvc, "push", cwd=repo)
    pushed = _objects(s3, "resnet-mlops", "dvc/")
    assert len(pushed) >= 4  # the prepared and preprocessed data, model.pt, checkpoint.pt

    # What DVC tracks (models/ also holds files of training's own, which DVC does not).
    tracked = ("data/prepared", "data/preprocessed", "models/model.pt", "models/checkpoint.pt")
    before = _digests(repo, tracked)
    assert "models/model.pt" in before and len(before) > 4
    for folder in ("data", "models", ".dvc/cache"):
        shutil.rmtree(repo / folder)
    run(*dvc, "pull", cwd=repo)
    assert _digests(repo, tracked) == before
    assert "Data and pipelines are up to date" in run(*dvc, "status", cwd=repo)

    # MLflow: the run's artifacts and the registered model are objects in the bucket.
    client = MlflowClient(server.uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    stored = _objects(s3, "mlflow", "artifacts/")
    assert any(key.endswith("/MLmodel") for key in stored)
    assert any(version.run_id in key for key in stored)

    # A clean process (no repo, no AWS keys) pulls the champion through the server.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resnet = str(Path(sys.executable).with_name("resnet"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["MLFLOW_TRACKING_URI"] = server.uri
    pulled = subprocess.run(
        [resnet, "pull", f"models:/{NAME}@champion", "--out", "champion"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (elsewhere / "champion" / "MLmodel").is_file()
    assert f"version {version.version}" in (elsewhere / "champion" / "MODEL_CARD.md").read_text()
