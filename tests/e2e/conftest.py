"""Servers several end-to-end modules share: started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import Postgres, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster with an ``mlflow`` database (each user creates its own others)."""
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the dev extra)")
    with running_postgres() as server:
        yield server
