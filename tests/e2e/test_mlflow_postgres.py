"""The stack's MLflow server configuration for real: a PostgreSQL backend store.

A throwaway PostgreSQL cluster (Debian's ``postgresql`` package; .ci/run installs it) runs in a
temporary folder on 127.0.0.1, as the ``postgres`` user when the tests run as root (PostgreSQL
refuses root). ``mlflow server`` uses it as its backend store, as docker/compose.yaml does,
with a local artifact root instead of MinIO. One tiny ``resnet train``, ``resnet evaluate`` and
``resnet register`` go through that server; the run, its metrics, the registered version and
its aliases are then read back through MLflow and straight from PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import MlflowServer, start_mlflow_server
from tests.support.postgres import Postgres
from tests.support.project import PARAMS

psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the dev extra)")

RESNET = str(Path(sys.executable).with_name("resnet"))
NAME = "postgres-classifier"
# One epoch of ResNet-20 on the small data (13 iterations at batch 32).
SMALL = [
    "train.batch_size=32",
    "train.schedule.length=13",
    "train.schedule.milestones=[10]",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]


@pytest.fixture(scope="module")
def server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` as the stack runs it: PostgreSQL backend, proxied artifacts."""
    # The first start creates MLflow's schema in PostgreSQL: minutes on loaded cores.
    running = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-postgres"),
        timeout_s=180,
        # The driver named: SQLAlchemy 2.1 takes a bare postgresql:// as psycopg 3.
        backend=postgres.uri("mlflow", "postgresql+psycopg2"),
    )
    yield running
    running.stop()


def _resnet(*args: str, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [RESNET, *args, "--params", str(PARAMS)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_train_and_register_through_a_postgres_backed_server(
    postgres: Postgres, server: MlflowServer, small_cifar: Path, tmp_path: Path
) -> None:
    data = ("--data", str(small_cifar))
    _resnet(
        *("train", *data, "--out", str(tmp_path / "models")),
        *("--metrics", str(tmp_path / "train.json"), "--history", str(tmp_path / "h.json")),
        *SMALL,
        uri=server.uri,
        cwd=tmp_path,
    )
    _resnet(
        *("evaluate", *data, "--model", str(tmp_path / "models" / "model.pt")),
        *("--metrics", str(tmp_path / "evaluate.json"), "--plots", str(tmp_path / "plots")),
        uri=server.uri,
        cwd=tmp_path,
    )
    _resnet(
        *("register", *data, "--model", str(tmp_path / "models" / "model.pt")),
        *("--evaluation", str(tmp_path / "evaluate.json"), "--out", str(tmp_path / "reg.json")),
        f"register.name={NAME}",
        uri=server.uri,
        cwd=tmp_path,
    )

    # Through MLflow: the finished run with its metrics, version 1 as champion and challenger.
    client = MlflowClient(server.uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.version == "1"
    assert client.get_model_version_by_alias(NAME, "challenger").version == "1"
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model"] == "resnet20"
    val_error = json.loads((tmp_path / "h.json").read_text())[-1]["val_error"]
    assert run.data.metrics["val_error"] == pytest.approx(val_error)
    assert "test_top1_error" in run.data.metrics
    assert json.loads((tmp_path / "reg.json").read_text())

    # And in PostgreSQL itself: this is where the server kept them.
    [(status,)] = postgres.query(
        "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run.info.run_id
    )
    assert status == "FINISHED"
    [(stored,)] = postgres.query(
        "mlflow",
        "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'val_error'",
        run.info.run_id,
    )
    assert stored == pytest.approx(val_error)
    aliases = postgres.query(
        "mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s", NAME
    )
    assert sorted(aliases) == [("challenger", 1), ("champion", 1)]
    [(versions,)] = postgres.query(
        "mlflow", "SELECT count(*) FROM model_versions WHERE name = %s", NAME
    )
    assert versions == 1
