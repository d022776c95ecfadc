"""Checkpoints: everything needed to resume, written atomically, read with clear errors."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from resnet_mlops.errors import UserError
from resnet_mlops.io import naming_output, temp_file_beside

FORMAT = "resnet-mlops/checkpoint/1"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: the message is one line naming the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A kill during the write leaves the previous checkpoint intact.
    """
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        written = _os_error(error) if isinstance(error, OSError | RuntimeError) else None
        if written is not None:  # name the checkpoint, not its temporary file
            raise naming_output(written, path, Path(tmp)) from error
        raise


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed ``torch.save``: torch's zip writer turns a full disk into
    ``RuntimeError("[enforce fail at inline_container.cc] ...")`` raised during the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def temporary_pattern(path: Path) -> re.Pattern[str]:
    """The names :func:`save_checkpoint` gives its temporary files for ``path``.

    ``tempfile.mkstemp`` adds 8 characters of ``[a-z0-9_]`` between our prefix and suffix.
    """
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files a killed :func:`save_checkpoint` left beside ``path``.

    Only names of our own pattern, only in ``path``'s folder. The caller must hold that
    folder's lock (:func:`~resnet_mlops.train.outdir.lock_output`): a live writer's temporary
    file looks the same.

    Returns:
        The files removed.
    """
    if not path.parent.is_dir():
        return []
    pattern = temporary_pattern(path)
    removed = []
    for candidate in path.parent.iterdir():
        if pattern.fullmatch(candidate.name) and candidate.is_file():
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def peek_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's small entries (not its tensors), or None if it is missing or unreadable.

    Memory-maps the file, so deciding whether to resume a large checkpoint does not read its
    weights; :func:`load_checkpoint` reports what is wrong with an unreadable one.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, damaged, or an old (non-zip) format that cannot be mapped
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None
    return {k: v for k, v in state.items() if k not in ("model_state", "optimizer_state")}


def load_checkpoint(path: Path, *, model: str | None = None) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain types only: ``weights_only``).

    Raises:
        CheckpointError: missing, unreadable or corrupt, not one of ours, or (with ``model``)
            holding another model.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resnet-mlops checkpoint")
    if model is not None and state.get("model") != model:
        raise CheckpointError(f"{path}: holds {state.get('model')!r}, not {model!r}")
    return state
