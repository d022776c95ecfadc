"""The code version a run came from, as MLflow tags."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

log = logging.getLogger(__name__)

GIT_DIRTY_TAG = "git.dirty"


def git_tags(root: Path) -> dict[str, str]:
    """``{"mlflow.source.git.commit": sha, "git.dirty": "true"|"false"}`` for the checkout.

    Untracked files count as dirty: an uncommitted new module changes the code that ran.
    Outside a checkout, or without git: an empty dict and a warning.
    """
    try:
        commit, status = (
            subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
            ).stdout.strip()
            for args in (("rev-parse", "HEAD"), ("status", "--porcelain"))
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        log.warning("no git commit recorded for %s: %s", root, str(detail).strip())
        return {}
    return {MLFLOW_GIT_COMMIT: commit, GIT_DIRTY_TAG: "true" if status else "false"}
