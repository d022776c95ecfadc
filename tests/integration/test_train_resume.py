"""Resuming only the run that wrote a checkpoint, finished checkpoints, one writer per output
folder, leftovers of killed writes, and stopping when the launcher (``dvc repro``) is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from resnet_mlops.engine.checkpoint import (
    CheckpointError,
    peek_checkpoint,
    remove_stale_temporaries,
)
from resnet_mlops.stages.train import run_training
from resnet_mlops.train.outdir import OutputBusy, lock_output
from resnet_mlops.train.resume import TRAIN_CODE, code_version, mismatch
from tests.support.project import PARAMS, REPO

PACKAGE = REPO / "src" / "resnet_mlops"
# The real params.yaml, shrunk: a few iterations of ResNet-20 (13 batches make an epoch).
TINY = [
    "train.batch_size=32",
    "train.schedule.milestones=[]",  # a few iterations: no lr drop
    "train.log_every=1",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]


def test_train_code_mirrors_the_train_stage_deps_in_dvc_yaml() -> None:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    prefix = "src/resnet_mlops/"
    code = {dep[len(prefix) :] for dep in stage["deps"] if dep.startswith(prefix)}
    assert code == set(TRAIN_CODE)
    assert "--stop-with-parent" in stage["cmd"] and "--auto-resume" in stage["cmd"]


def test_editing_the_report_keeps_the_code_version_and_editing_training_changes_it(
    tmp_path: Path,
) -> None:
    package = tmp_path / "resnet_mlops"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(package)
    assert before == code_version(PACKAGE)
    with (package / "report" / "figures.py").open("a") as f:
        f.write("\n# a changed plot title\n")
    cli = package / "cli" / "__init__.py"
    cli.write_text(cli.read_text() + "\n# a new flag\n")
    assert code_version(package) == before  # neither is a dep of the train stage
    with (package / "train" / "loop.py").open("a") as f:
        f.write("\n# a changed loop\n")
    assert code_version(package) != before
    with (package / "data" / "loaders" / "new_reader.py").open("w") as f:
        f.write("# a new reader\n")
    assert code_version(package) != code_version(PACKAGE)


def test_mismatch_says_what_differs() -> None:
    key = {"dataset": "cifar10", "train": {"model": "resnet20", "seed": 0}, "code_version": "a"}
    assert mismatch(key, key) is None
    assert "no resume key" in mismatch(None, key)
    other = {**key, "train": {"model": "resnet20", "seed": 1}, "code_version": "b"}
    assert mismatch(other, key) == "written with other train params (seed), code version"


def test_only_our_stale_temporaries_are_removed(tmp_path: Path) -> None:
    ours = [tmp_path / ".checkpoint.pt.ab_cd123.tmp", tmp_path / ".model.pt.x1y2z3w4.tmp"]
    theirs = [
        tmp_path / ".checkpoint.pt.notes.tmp",  # not mkstemp's 8 characters
        tmp_path / "checkpoint.pt.ab_cd123.tmp",
        tmp_path / ".checkpoint.pt.ab_cd123.tmp.bak",
        tmp_path / "sub" / ".checkpoint.pt.ab_cd123.tmp",
    ]
    for path in ours + theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    removed = remove_stale_temporaries(tmp_path / "checkpoint.pt")
    removed += remove_stale_temporaries(tmp_path / "model.pt")
    assert sorted(removed) == sorted(ours)
    assert all(path.exists() for path in theirs) and not any(p.exists() for p in ours)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from resnet_mlops.train.outdir import lock_output
with lock_output(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_output_lock_admits_one_writer_and_dies_with_it(tmp_path: Path) -> None:
    out = tmp_path / "models"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy) as busy, lock_output(out):
            pass
        assert str(busy.value) == f"{out}: in use by another resnet train (pid {holder.pid})"
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
        holder.wait()
    with lock_output(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())


@pytest.mark.slow  # runs the console script (several seconds)
def test_a_second_resnet_train_on_a_locked_folder_is_a_one_line_error(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "checkpoint.pt").write_bytes(b"the other writer's checkpoint")
    with lock_output(models):
        result = subprocess.run(
            ["resnet", "train", "--params", str(PARAMS), "--out", str(models), "--auto-resume"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {models}: in use by another resnet train (pid {os.getpid()})"
    )
    assert (models / "checkpoint.pt").read_bytes() == b"the other writer's checkpoint"


CHAIN = """
import os
from resnet_mlops.train.stop import launcher_chain
print(" ".join(str(p.pid) for p in launcher_chain()))
"""


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_the_launcher_is_the_first_ancestor_that_is_not_a_shell_wrapper(shell: str) -> None:
    # "; true": the shell cannot exec the command and stays in between, as DVC's $SHELL -c may.
    command = f"{sys.executable} -c '{CHAIN}'; true"
    result = subprocess.run([shell, "-c", command], capture_output=True, text=True, check=True)
    chain = [int(pid) for pid in result.stdout.split()]
    assert chain[-1] == os.getpid()  # this test, not the shell
    assert len(chain) == 2  # the shell, then us


def _train(tmp: Path, data: Path, length: int, resume: bool | str = "auto"):
    return run_training(
        PARAMS,
        [*TINY, f"train.schedule.length={length}"],
        data,
        tmp / "models",
        tmp / "metrics.json",
        tmp / "history.json",
        resume,
    )


@pytest.mark.slow
def test_auto_resume_continues_only_the_run_that_wrote_the_checkpoint(
    tmp_path: Path, small_cifar: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17 item 2 and 3(b): a 3-iteration run, a 5-iteration one, the first checkpoint
    back (`git checkout && dvc checkout`), the 5-iteration params: a fresh run, not "it 4/5"
    of the first run's MLflow run. Then a finished checkpoint rebuilds the outputs."""
    client = MlflowClient()
    models = tmp_path / "models"
    first = _train(tmp_path, small_cifar, 3)
    shutil.copyfile(models / "checkpoint.pt", tmp_path / "first.pt")
    first_end = client.get_run(first.run_id).info.end_time
    second = _train(tmp_path, small_cifar, 5)
    assert second.run_id != first.run_id and second.iterations == 5

    with pytest.raises(CheckpointError, match=r"at iteration 5, past the end of this schedule"):
        _train(tmp_path, small_cifar, 3, resume=True)

    shutil.copyfile(tmp_path / "first.pt", models / "checkpoint.pt")
    capsys.readouterr()
    third = _train(tmp_path, small_cifar, 5)
    out, err = capsys.readouterr()
    assert f"not resuming {models}/checkpoint.pt: written with other train params (schedule)" in err
    assert "it 1/5" in out and "it 4/5" in out and third.iterations == 5
    assert [record["iteration"] for record in third.history] == [5.0]
    assert third.run_id not in (first.run_id, second.run_id)
    first_run = client.get_run(first.run_id).info
    assert (first_run.status, first_run.end_time) == ("FINISHED", first_end)  # not reopened
    assert (
        peek_checkpoint(models / "checkpoint.pt")["resume_key"]["train"]["schedule"]["length"] == 5
    )

    # A finished checkpoint (the run was killed after it): the outputs come back from it.
    model = torch.load(models / "model.pt", weights_only=True)
    history = (tmp_path / "history.json").read_text()
    metrics = (tmp_path / "metrics.json").read_text()
    for path in (models / "model.pt", tmp_path / "history.json", tmp_path / "metrics.json"):
        path.unlink()
    third_end = client.get_run(third.run_id).info.end_time
    capsys.readouterr()
    rebuilt = _train(tmp_path, small_cifar, 5)
    out, err = capsys.readouterr()
    assert rebuilt.rebuilt and rebuilt.run_id == third.run_id and "it 1/5" not in out
    assert "had already finished (5 iterations): outputs rewritten" in err
    assert (tmp_path / "history.json").read_text() == history
    assert (tmp_path / "metrics.json").read_text() == metrics
    again = torch.load(models / "model.pt", weights_only=True)
    for key, value in model["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert again["provenance"]["mlflow_run_id"] == third.run_id
    run = client.get_run(third.run_id).info
    assert (run.status, run.end_time) == ("FINISHED", third_end)  # never flipped to RUNNING

    # Its writer died before ending the MLflow run: the rebuild completes and ends it.
    client.update_run(third.run_id, status="RUNNING")
    _train(tmp_path, small_cifar, 5)
    assert client.get_run(third.run_id).info.status == "FINISHED"

    # Killed (-9) and then replaced by a fresh start: nothing else would end its run.
    client.update_run(third.run_id, status="RUNNING")
    capsys.readouterr()
    fresh = _train(tmp_path, small_cifar, 3)
    assert f"MLflow run {third.run_id} of the replaced" in capsys.readouterr().err
    assert client.get_run(third.run_id).info.status == "KILLED"
    assert client.get_run(fresh.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_ended_by_the_next_training(
    tmp_path: Path, small_cifar: Path
) -> None:
    """``kill -9`` after the MLflow run started, before any checkpoint named it: the run would
    stay RUNNING forever. The next ``resnet train`` in that folder finds it (its pid, host and
    folder are run tags; the pid is gone) and ends it KILLED, saying why.

    Training checkpoints right after it opens the run, so that window is milliseconds wide: the
    test kills a real training later and removes its checkpoint, which leaves what a kill in
    the window leaves (a RUNNING run that no checkpoint names)."""
    from tests.support.mlflow_server import start_mlflow_server

    server = start_mlflow_server(tmp_path / "mlflow")
    try:
        client = MlflowClient(server.uri)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
        args = ["resnet", "train", "--auto-resume", "--params", str(PARAMS)]
        args += ["--data", str(small_cifar), "--out", "models", "--metrics", "metrics.json"]
        args += ["--history", "history.json", *TINY, "train.experiment=killed"]
        first = subprocess.Popen(
            [*args, "train.schedule.length=400"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        while True:
            experiment = client.get_experiment_by_name("killed")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs:
                break
            assert time.time() < deadline and first.poll() is None, "no run started"
            time.sleep(0.2)
        first.kill()  # SIGKILL
        first.wait()
        (run,) = runs
        (tmp_path / "models" / "checkpoint.pt").unlink(missing_ok=True)
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        assert run.data.tags["resnet.pid"] == str(first.pid)

        second = subprocess.run(
            [*args, "train.schedule.length=2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert second.returncode == 0, second.stderr
        assert f"MLflow run {run.info.run_id}: its resnet train (pid {first.pid}" in second.stderr
        ended = client.get_run(run.info.run_id)
        assert ended.info.status == "KILLED"
        assert f"pid {first.pid} on " in ended.data.tags["resnet.ended"]
        statuses = [r.info.status for r in client.search_runs([experiment.experiment_id])]
        assert sorted(statuses) == ["FINISHED", "KILLED"]
    finally:
        server.stop()


LAUNCHER = """
import os, subprocess, sys
# Like dvc repro: the stage command through $SHELL -c, which stays in between here.
subprocess.run(["bash", "-c", sys.argv[1] + ' > train.log 2>&1; echo $? > rc'])
"""


@pytest.mark.slow
def test_a_killed_launcher_stops_training_with_a_checkpoint(
    tmp_path: Path, small_cifar: Path
) -> None:
    """Issue 17 item 3(a): `kill -9` to the process that started `resnet train
    --stop-with-parent` (dvc repro): training checkpoints and exits 143, its run KILLED."""
    command = " ".join(
        [
            "resnet train --stop-with-parent --auto-resume",
            f"--params {PARAMS} --data {small_cifar} --out models",
            "--metrics metrics.json --history history.json",
            *TINY,
            "train.schedule.length=40",
        ]
    )
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, command], cwd=tmp_path)
    log = tmp_path / "train.log"
    deadline = time.time() + 300
    while "it 2/40" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline and launcher.poll() is None, log.read_text()
        time.sleep(0.5)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    rc = tmp_path / "rc"
    while not rc.exists() or not rc.read_text().strip():
        assert time.time() < deadline, log.read_text()
        time.sleep(0.5)
    output = log.read_text()
    assert rc.read_text().strip() == "143", output
    assert f"process {launcher.pid} (python" in output and "that launched it exited" in output
    assert "checkpoint saved to models/checkpoint.pt" in output
    state = peek_checkpoint(tmp_path / "models" / "checkpoint.pt")["train_state"]
    assert 2 <= state["iteration"] < 40
    assert MlflowClient().get_run(state["run_id"]).info.status == "KILLED"
    assert not (tmp_path / "models" / "model.pt").exists()
