"""One flow run at a time per DVC workspace, and the run's params written where DVC reads them.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dvc.utils.serialize import modify_yaml
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from ruamel.yaml.comments import CommentedSeq

from resnet_mlops.config import ConfigError, apply_overrides, read_yaml
from resnet_mlops.params import check_pipeline, load_params

PARAMS_FILE = "params.yaml"
# A training run can hold the workspace for days; the lease is renewed while the flow runs.
LEASE_SECONDS = 300.0


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
    change; comments and layout stay. Nothing is written when nothing changes."""
    if not overrides:
        return
    current = read_yaml(params)
    tree = apply_overrides(current, list(overrides))
    if tree == current:
        return
    with modify_yaml(str(params)) as document:
        for override in overrides:
            *parents, leaf = override.partition("=")[0].split(".")
            node, value = document, tree
            for part in parents:
                node, value = node[part], value[part]
            node[leaf] = _like(node.get(leaf), value[leaf])


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
    "ConfigError",
    "lock_name",
    "run_overrides",
    "validate_params",
    "workspace_lock",
    "write_params",
]
