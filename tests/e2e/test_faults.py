"""Fault injection: a tiny deterministic ``dvc repro`` killed again and again (SIGKILL to its
process group in prepare, SIGTERM to dvc in train, SIGKILL to the training process, SIGKILL to
dvc alone in train, SIGTERM to dvc in register), then run to the end, finishes where an
uninterrupted run finishes: the same data, the same weights and metrics, ``dvc status``
clean, and no MLflow run left RUNNING.

What is compared: the DVC hashes of the prepared and preprocessed data; model.pt's weights
(bit for bit), config, preprocessing and metrics; the train, evaluate, prepare and preprocess
metrics and the training history, and register.json whole: the register killed by SIGTERM to
dvc goes on and registers version 1 outside DVC; the final run finds that version (the same
model file and evaluation) instead of registering a second. Left out, as they are not
deterministic: images/s, and in model.pt the provenance (MLflow run id, git commit of each
copy).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from mlflow import MlflowClient

from resnet_mlops.params.base import apply_overrides, read_yaml
from tests.support.project import GIT_IDENTITY, PARAMS, class_folders, copy_project

NAME = "fault-test-classifier"
TARGET = "register"  # the report stage reads MLflow as a whole: not part of this comparison
SHRINK = [
    "prepare.workers=1",
    "preprocess.cifar10.val_size=50",
    "preprocess.workers=1",
    "loader.num_threads=1",
    "loader.backend=torch",
    "train.batch_size=32",  # 150 training images: 5 iterations an epoch
    "train.schedule.length=12",
    "train.schedule.milestones=[8]",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.device=cpu",
    "evaluate.batch_size=100",
    "evaluate.device=cpu",
    f"register.name={NAME}",
]
TIMEOUT = 600


class Repro:
    """``dvc repro`` in its own process group, its output (and its children's) read as it
    comes; :meth:`finish` waits for the pipe's end, i.e. for every process that inherited it."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro", TARGET],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.output += line
                self._changed.notify_all()

    def wait_for(self, text: str, command: str | None = None) -> psutil.Process | None:
        """Wait until ``text`` is in the output (and, with ``command``, a descendant of dvc
        runs ``resnet <command>``); returns that descendant."""
        deadline = time.time() + TIMEOUT
        with self._changed:
            while text not in self.output:
                assert self._reader.is_alive(), f"never saw {text!r}:\n{self.output[-3000:]}"
                assert time.time() < deadline, f"never saw {text!r}:\n{self.output[-3000:]}"
                self._changed.wait(1)
        while command is not None:
            found = {}
            for child in psutil.Process(self.process.pid).children(recursive=True):
                try:
                    argv, parent = child.cmdline(), child.ppid()
                except psutil.NoSuchProcess:
                    continue
                if any(Path(a).name == "resnet" for a in argv[:2]) and command in argv:
                    found[child.pid] = (child, parent)
            # Not a DataLoader worker: those are forks with the same command line.
            for child, parent in found.values():
                if parent not in found:
                    return child
            assert time.time() < deadline, f"no resnet {command} under dvc:\n{self.output}"
            time.sleep(0.2)
        return None

    def finish(self) -> tuple[int, str]:
        self._reader.join(TIMEOUT)
        assert not self._reader.is_alive(), f"still running:\n{self.output[-3000:]}"
        return self.process.wait(TIMEOUT), self.output


def run(*command: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def make_repo(root: Path, source: Path) -> tuple[Path, dict[str, str]]:
    """A git repository with the pipeline, tiny params and an MLflow store of its own."""
    repo = copy_project(root / "repo")
    tree = apply_overrides(read_yaml(PARAMS), [f"prepare.cifar10.source={source}", *SHRINK])
    (repo / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",  # progress lines reach the pipe as they are printed
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
    }
    run("git", "init", "-q", cwd=repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-qm", "pipeline", cwd=repo, env=env)
    return repo, env


def interrupted(repo: Path, env: dict[str, str], until: str, command: str, kill: Callable) -> str:
    """One ``dvc repro`` killed by ``kill(dvc, resnet <command>)`` once ``until`` is printed;
    returns its output once every process it started has ended."""
    repro = Repro(repo, env)
    child = repro.wait_for(until, command)
    kill(repro.process, child)
    code, output = repro.finish()
    assert code != 0, output
    return output


def timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_second"} for r in records]


def outcome(repo: Path, env: dict[str, str]) -> dict:
    """What an uninterrupted and an interrupted pipeline must agree on."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    data = {
        out["path"]: out["md5"]
        for stage in ("prepare", "preprocess")
        for out in lock[stage]["outs"]
    }
    model = torch.load(repo / "models" / "model.pt", weights_only=True)
    metrics = {
        name: json.loads((repo / "metrics" / f"{name}.json").read_text())
        for name in ("prepare", "preprocess", "evaluate")
    }
    register = json.loads((repo / "metrics" / "register.json").read_text())
    runs = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [e.experiment_id for e in MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()]
    )
    return {
        "data": data,
        "weights": model["state_dict"],
        "model": {k: model[k] for k in ("model", "config", "parameters")},
        "preprocessing": {
            k: v.tolist() if isinstance(v, torch.Tensor) else v  # the mean image
            for k, v in model["preprocessing"].items()
        },
        "model_metrics": timeless([model["metrics"]]),
        "train": timeless([json.loads((repo / "metrics" / "train.json").read_text())]),
        "history": timeless(json.loads((repo / "plots" / "train_history.json").read_text())),
        "metrics": metrics,
        "register": register,
        "versions": [
            v.version
            for v in MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions(
                f"name = '{NAME}'"
            )
        ],
        "running": [r.info.run_id for r in runs if r.info.status == "RUNNING"],
    }


def _signal_group(sig: int) -> Callable:
    return lambda dvc, child: os.killpg(dvc.pid, sig)


def _signal_dvc(sig: int) -> Callable:
    return lambda dvc, child: os.kill(dvc.pid, sig)


def _signal_child(sig: int) -> Callable:
    return lambda dvc, child: child.send_signal(sig)


@pytest.mark.slow
def test_a_killed_repro_resumes_to_the_same_outputs(tmp_path: Path) -> None:
    source = class_folders(tmp_path / "cifar-subset", {"train": 20, "test": 10})
    reference, reference_env = make_repo(tmp_path / "reference", source)
    repro = Repro(reference, reference_env)
    code, output = repro.finish()
    assert code == 0, output
    expected = outcome(reference, reference_env)
    assert expected["running"] == []

    repo, env = make_repo(tmp_path / "faulty", source)
    output = interrupted(repo, env, "Running stage 'prepare'", "prepare", _signal_group(9))
    assert "Running stage 'preprocess'" not in output

    output = interrupted(repo, env, "it 2/12", "train", _signal_dvc(signal.SIGTERM))
    assert "that launched it exited; stopping" in output  # training did not go on alone
    assert "checkpoint saved to models/checkpoint.pt" in output

    output = interrupted(repo, env, "it 7/12", "train", _signal_child(signal.SIGKILL))
    assert "it 1/12" not in output  # resumed

    output = interrupted(repo, env, "it 10/12", "train", _signal_dvc(signal.SIGKILL))
    assert "that launched it exited; stopping" in output

    output = interrupted(repo, env, "Running stage 'register'", "register", _signal_dvc(15))
    assert "it 1/12" not in output and "trained 12 iterations" in output

    code, output = Repro(repo, env).finish()
    assert code == 0, output
    assert "Running stage 'register'" in output and "Running stage 'train'" not in output
    assert "Data and pipelines are up to date" in run(
        sys.executable, "-m", "dvc", "status", TARGET, cwd=repo, env=env
    )
    found = outcome(repo, env)
    for key, value in expected.pop("weights").items():
        torch.testing.assert_close(found["weights"][key], value, rtol=0, atol=0, msg=key)
    found.pop("weights")
    assert found == expected
