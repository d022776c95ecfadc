"""Which folders a flow may run in, one flow run at a time per DVC workspace, and the run's
params written where DVC reads them.

Why an allow-list: ``workspace`` is a flow parameter, so anyone who can start a flow run through
the Prefect API chooses it; unchecked, the worker would run ``dvc repro`` (the commands of
whatever ``dvc.yaml`` is there) in any folder it can reach. A workspace must resolve inside the
deployment's own folder or a folder the worker's operator lists in ``RESNET_WORKSPACES``.

Why serialise rather than isolate: a DVC workspace *is* the pipeline's state. ``dvc.lock``, the
outputs it describes and ``models/checkpoint.pt`` (what a retried or rerun train stage resumes
from) live there, and ``dvc repro`` itself refuses a second run in the same workspace ("...
is busy"). A per-run copy would have to be merged back, would not resume the previous run's
checkpoint, and buys nothing on a machine with one GPU, where two trainings only slow each
other down. A Prefect global concurrency limit of 1 per workspace turns DVC's "busy" error into
a queue that the Prefect UI shows. (``dvc exp run --queue`` is the tool for isolated copies.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from ruamel.yaml.comments import CommentedSeq

from resnet_mlops.io import atomic_write_bytes
from resnet_mlops.params import check_pipeline, load_params
from resnet_mlops.params.base import ConfigError, apply_overrides, read_yaml

PARAMS_FILE = "params.yaml"
# Set on the worker by its operator, never a flow parameter: more folders flows may run in.
WORKSPACES_ENV = "RESNET_WORKSPACES"
# The checkout the flows' code was loaded from: a deployment's own folder.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A training run can hold the workspace for days; the lease is renewed while the flow runs.
LEASE_SECONDS = 300.0


class WorkspaceNotAllowed(ValueError):
    """A flow's ``workspace`` is outside the folders it may run in, or the allow-list is bad."""


def allowed_workspaces(listed: str, defaults: Sequence[Path]) -> list[Path]:
    """The folders flows may run in: ``defaults`` and the absolute paths in ``listed``.

    Args:
        listed: The value of ``RESNET_WORKSPACES``: folders separated by ``os.pathsep``
            (empty entries are skipped).
        defaults: The deployment's own folders (the flows' checkout, the working directory).

    Returns:
        Each folder once, symlinks resolved, so that a check against them compares real paths.

    Raises:
        WorkspaceNotAllowed: an entry of ``listed`` is not an absolute path.
    """
    entries = [entry for entry in listed.split(os.pathsep) if entry]
    for entry in entries:
        if not os.path.isabs(entry):
            raise WorkspaceNotAllowed(
                f"{WORKSPACES_ENV}: {entry!r} is not an absolute path "
                f"(folders separated by {os.pathsep!r})"
            )
    roots = [Path(os.path.realpath(folder)) for folder in (*defaults, *entries)]
    return list(dict.fromkeys(roots))


def check_workspace(workspace: str | os.PathLike[str], allowed: Sequence[Path]) -> Path:
    """``workspace`` as a real path, if it lies in one of the ``allowed`` folders.

    The path is resolved first (``os.path.realpath``), so ``..`` and symlinks that lead out of
    an allowed folder are caught; the comparison is by path components, so ``/srv/ws-evil`` is
    not inside ``/srv/ws``.

    Raises:
        WorkspaceNotAllowed: in one line naming the path, the allowed folders and
            ``RESNET_WORKSPACES``.
    """
    real = Path(os.path.realpath(workspace))
    if any(real.is_relative_to(root) for root in allowed):
        return real
    folders = ", ".join(str(root) for root in allowed)
    shown = str(workspace) if str(workspace) == str(real) else f"{workspace} (really {real})"
    raise WorkspaceNotAllowed(
        f"workspace {shown} is outside the folders flows may run in ({folders}); "
        f"the worker's {WORKSPACES_ENV} (folders separated by {os.pathsep!r}) adds more"
    )


def flow_workspace(workspace: str | None) -> Path:
    """The folder a flow runs in: ``workspace`` (default: the working directory), checked
    against the deployment's folders (the flows' checkout and the working directory, where a
    deployment's ``set_working_directory`` step puts it) and the worker's ``RESNET_WORKSPACES``.

    Raises:
        WorkspaceNotAllowed: the folder is outside them.
    """
    cwd = Path.cwd()
    allowed = allowed_workspaces(os.environ.get(WORKSPACES_ENV, ""), [PROJECT_ROOT, cwd])
    return check_workspace(workspace or cwd, allowed)


def run_overrides(
    dataset: str | None, model: str | None, overrides: Sequence[str] | None
) -> list[str]:
    """The flow's parameters as ``key=value`` overrides of ``params.yaml``."""
    changes = [f"dataset={dataset}"] if dataset else []
    changes += [f"train.model={model}"] if model else []
    return changes + list(overrides or [])


def validate_params(params: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """``params`` with ``overrides`` applied, checked whole by the one params model.

    Returns:
        The whole params tree the run will use.

    Raises:
        ConfigError: an unknown key, a wrong type, a bad range or an unknown model, in one
            line naming the file and the key.
    """
    loaded, tree = load_params(params, list(overrides))
    check_pipeline(loaded, params)
    return tree


def write_params(params: Path, overrides: Sequence[str]) -> None:
    """Write ``overrides`` into ``params`` as ``dvc exp run -S`` does: only the keys named
    change; comments and layout stay. Nothing is written when nothing changes; otherwise the
    file is replaced whole (temporary file, then rename), never left half-written."""
    if not overrides:
        return
    current = read_yaml(params)
    tree = apply_overrides(current, list(overrides))
    if tree == current:
        return
    # DVC's own round-trip parser and dumper, so the file reads as `dvc exp run -S` leaves it.
    document = parse_yaml_for_update(params.read_text(), str(params))
    for override in overrides:
        *parents, leaf = override.partition("=")[0].split(".")
        node, value = document, tree
        for part in parents:
            node, value = node[part], value[part]
        node[leaf] = _like(node.get(leaf), value[leaf])
    atomic_write_bytes(params, dumps_yaml(document).encode())


@contextlib.contextmanager
def params_for_run(params: Path, overrides: Sequence[str], persist: bool = False) -> Iterator[None]:
    """``params`` with ``overrides`` written for the block, then as it was, byte for byte.

    Why not ``dvc exp run --temp``: it runs the whole pipeline in a temporary copy, as one
    command, so the flow would lose its per-stage tasks, their retries and the train stage's
    resume from the workspace's checkpoint. The stages therefore run here with the overrides
    written, and ``dvc exp save`` records them as an experiment; what the block leaves in
    ``dvc.lock`` and the outputs is the run's result, as after ``dvc exp apply``.

    Args:
        params: The workspace's ``params.yaml``.
        overrides: ``key=value`` changes for this run only.
        persist: Keep the overrides in ``params.yaml`` after the block (the old behaviour).

    The file is put back only if it still holds what this run wrote: someone who edited it
    meanwhile keeps their edit (a warning says the overrides were not undone).
    """
    original = params.read_bytes()
    written = original
    try:
        write_params(params, overrides)
        written = params.read_bytes()
        yield
    finally:
        if not persist and written != original:
            if params.read_bytes() == written:
                atomic_write_bytes(params, original)
            else:
                warnings.warn(
                    f"{params} changed during the run: left as it is; this run's overrides "
                    f"({', '.join(overrides)}) may still be in it",
                    stacklevel=3,
                )


def _like(old: Any, new: Any) -> Any:
    """``new``, as a flow-style list (``[32000, 48000]``) where the file had one."""
    if isinstance(new, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
        seq = CommentedSeq(new)
        seq.fa.set_flow_style()
        return seq
    return new


def lock_name(root: Path) -> str:
    """The global concurrency limit that guards the workspace at ``root``."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return f"dvc-workspace-{digest}"


def _ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[str]:
    """Hold the workspace's slot (a Prefect global concurrency limit of 1) for the block.

    A second flow run on the same workspace waits here until the first one finishes.
    """
    name = lock_name(root)
    _ensure_limit(name)
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield name


__all__ = [
    "WORKSPACES_ENV",
    "ConfigError",
    "WorkspaceNotAllowed",
    "allowed_workspaces",
    "check_workspace",
    "flow_workspace",
    "lock_name",
    "params_for_run",
    "run_overrides",
    "validate_params",
    "workspace_lock",
    "write_params",
]
