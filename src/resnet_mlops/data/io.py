"""Atomic writes and checksums: a killed stage never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnet_mlops.data.errors import DataError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: Path) -> str:
    """Hex MD5 of a file (the official CIFAR-10 archive is published with one)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_outputs(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file in a folder (sorted), for a manifest."""
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def read_json(path: Path, hint: str) -> Any:
    """Read a JSON file a stage wrote; missing or malformed is a one-line :class:`DataError`.

    Args:
        path: the file.
        hint: what to do when it is missing, e.g. ``"run the prepare stage first"``.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({hint})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg})") from None


def dumps_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, fixed indentation): equal data, equal bytes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write deterministic JSON atomically."""
    atomic_write_bytes(path, dumps_json(data).encode())


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    On any error (or a kill) the temporary folder is removed, or at worst left under a hidden
    ``.name.tmp-*`` name that no stage reads, and the previous ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the output is an ordinary folder
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
