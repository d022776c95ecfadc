"""Where the project is, also when DVC runs a stage in a temporary copy of it."""

from __future__ import annotations

import re
from pathlib import Path

_DVC_EXPERIMENT_COPY = re.compile(r"^(?P<root>.+?)/\.dvc/tmp/exps/")


def project_root(cwd: Path) -> Path:
    """The project folder, also from inside a DVC experiment's temporary copy of it
    (``<project>/.dvc/tmp/exps/...``, where queued and ``--temp`` experiments run)."""
    match = _DVC_EXPERIMENT_COPY.match(cwd.resolve().as_posix() + "/")
    return Path(match["root"]) if match else cwd.resolve()
