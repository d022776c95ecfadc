"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's ``postgresql`` package; .ci/run
installs it), run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.mlflow_server import free_port


@dataclasses.dataclass
class Postgres:
    """A running throwaway cluster: connect as ``postgres`` over TCP on 127.0.0.1."""

    port: int
    folder: Path

    def uri(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str, *args: object) -> list[tuple]:
        import psycopg2  # the dev extra (psycopg2-binary)

        with contextlib.closing(
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        ) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall() if cursor.description else []


def postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    initdb = found[-1] if found else shutil.which("initdb")
    assert initdb, "PostgreSQL is missing: apt-get install postgresql (.ci/run does)"
    return Path(initdb).parent


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A throwaway cluster in a temporary folder, with an empty ``mlflow`` database."""
    bin_dir = postgres_bin()
    # Root cannot run PostgreSQL: the cluster then belongs to the package's `postgres` user,
    # in a folder of its own outside pytest's root-only temporary tree.
    as_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="resnet-postgres-"))
    if as_user:
        os.chown(folder, as_user.pw_uid, as_user.pw_gid)
    user = {"user": as_user.pw_uid, "group": as_user.pw_gid} if as_user else {}
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder)}
    data = folder / "data"

    def run(*command: str) -> None:
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=120, cwd=folder, **user
        )
        assert result.returncode == 0, result.stdout + result.stderr

    port = free_port()
    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    server = Postgres(port, folder)
    try:
        server.query("postgres", "CREATE DATABASE mlflow")
        yield server
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
