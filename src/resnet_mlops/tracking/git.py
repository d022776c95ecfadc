"""The code version a run came from, as MLflow tags."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

log = logging.getLogger(__name__)

GIT_DIRTY_TAG = "git.dirty"


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip()


def git_tags(root: Path) -> dict[str, str]:
    """The commit checked out at ``root`` and whether the tree differs from it.

    ``mlflow.source.git.commit`` is the tag MLflow's UI shows as the run's source version.
    Untracked files count as dirty: a new module that is not committed yet changes the code
    that ran just as much as an edit does (ignored files, such as DVC outputs, do not).

    Args:
        root: Any folder inside the checkout.

    Returns:
        ``{"mlflow.source.git.commit": sha, "git.dirty": "true" | "false"}``, or an empty dict
        (with a warning) when ``root`` is not in a git checkout or git is missing.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        log.warning("no git commit recorded for %s: %s", root, str(detail).strip())
        return {}
    return {MLFLOW_GIT_COMMIT: commit, GIT_DIRTY_TAG: "true" if status else "false"}
