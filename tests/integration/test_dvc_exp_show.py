"""What ``dvc exp show`` shows a user at a terminal: the headline metrics, then the knobs
experiments vary, with the data stages' settings and the code hashes collapsed out of view."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.project import PROJECT_FILES, copy_project, run

HEADLINE = ["images_per_second", "train_error", "val_error", "test_top1_error"]
HEADLINE += ["promoted", "version"]
COMMITTED = ("params.yaml", "dvc.lock", "metrics/headline/train.json")
COMMITTED += ("metrics/headline/evaluate.json", "metrics/headline/register.json")


def in_a_terminal(args: list[str], cwd: Path) -> str:
    """``args``' output with a pseudo-terminal as stdout (read while it runs: a full pty
    buffer would stall it), without the colour codes."""
    reader, writer = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(reader, 65536)
            except OSError:  # EIO: the last writer closed
                return
            if not data:
                return
            chunks.append(data)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    env = {**os.environ, "DVC_PAGER": "cat", "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=writer, stderr=subprocess.PIPE
        )
    finally:
        os.close(writer)
        thread.join(30)
        os.close(reader)
    assert done.returncode == 0, done.stderr.decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with the project's pipeline and its committed outputs."""
    repo = copy_project(tmp_path_factory.mktemp("exp") / "repo", PROJECT_FILES + COMMITTED)
    run("git", "init", "-q", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "pipeline", cwd=repo)
    return repo


def test_the_terminal_view_opens_on_the_headline_metrics_and_the_training_knobs(
    project: Path,
) -> None:
    shown = in_a_terminal([sys.executable, "-m", "dvc", "exp", "show"], project)
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    columns = [name for name in header if name != "…"]
    assert columns[:2] == ["Experiment", "Created"]
    assert columns[2:8] == HEADLINE  # right after the row names
    params = [name for name in columns if "." in name and "/" not in name]
    for knob in ("train.model", "train.optimizer.lr", "train.schedule.length", "train.seed"):
        assert knob in params
    assert columns.index("train.model") == 9  # after the metrics and `dataset`
    assert not [name for name in params if name.startswith(("prepare.", "preprocess."))]
    # Out of view, not gone: the CSV (like --keep or --only-changed) has every column.
    csv = run(sys.executable, "-m", "dvc", "exp", "show", "--csv", cwd=project)
    assert "prepare.cifar10.md5" in csv
