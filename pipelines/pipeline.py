"""The pipeline flow: every ``dvc.yaml`` stage as one Prefect task, run through ``dvc repro``.

    python -m pipelines.pipeline --model resnet32 --override train.schedule.length=1000

Each task runs ``dvc repro --single-item <stage>``, so DVC decides whether the stage must run
(its deps and params changed) and records it in ``dvc.lock``; the stage's ``resnet`` command
is the one ``dvc repro`` runs. Prefect adds per-stage state, logs and durations, retries, one
run at a time per workspace (:mod:`pipelines.workspace`) and the run's artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines.dag import git_tracked_outputs, pipeline_stages
from pipelines.summary import publish, read_outcome
from pipelines.workspace import (
    flow_workspace,
    run_overrides,
    validate_params,
    workspace_lock,
    write_params,
)
from resnet_mlops.tracking import RUN_TAGS_ENV

TRAIN_STAGE = "train"
# torchrun's environment form of --nproc_per_node; `resnet train` honours it.
NPROC_ENV = "PET_NPROC_PER_NODE"
LOG_TAIL_LINES = 30


class StageFailed(RuntimeError):
    """A stage's command exited with an error; the message ends with its last output lines."""


def _command_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, with this interpreter's tools (``dvc``, ``resnet``) first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", **extra}


def run_command(command: list[str], cwd: Path, extra_env: dict[str, str]) -> None:
    """Run ``command`` in ``cwd``, streaming its output to the Prefect log.

    Raises:
        StageFailed: it exited non-zero (its last lines are in the message).
    """
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=_command_env(extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info(line)
        code = process.wait()
    if code != 0:
        output = "\n".join(tail)
        raise StageFailed(f"{' '.join(command)} exited with {code}:\n{output}")


# Prefect's result cache is off: it cannot see the workspace. DVC is the cache here: a stage
# whose code, data and params are unchanged is skipped, its outputs restored from .dvc/cache.
@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(stage: str, workspace: Path, extra_env: dict[str, str]) -> str:
    """One ``dvc.yaml`` stage through DVC; a retried train stage resumes its checkpoint
    (its command has ``--auto-resume``)."""
    run_command(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage], workspace, extra_env
    )
    return stage


@task(name="record-experiment", task_run_name="record-experiment", cache_policy=NO_CACHE)
def record_experiment(workspace: Path, name: str) -> str:
    """Save the workspace as a DVC experiment (``dvc exp show`` lists it beside the others)."""
    include = [arg for path in git_tracked_outputs(workspace) for arg in ("-I", path)]
    run_command(
        [sys.executable, "-m", "dvc", "exp", "save", "--force", "-n", name, *include],
        workspace,
        {},
    )
    return name


def stage_env(stage: str, run_tags: dict[str, str] | None, nproc_per_node: int) -> dict[str, str]:
    """The variables a stage's process gets on top of the flow's environment."""
    env = {RUN_TAGS_ENV: json.dumps(run_tags)} if run_tags else {}
    if stage == TRAIN_STAGE and nproc_per_node > 1:
        env[NPROC_ENV] = str(nproc_per_node)
    return env


def experiment_name(run_name: str | None) -> str:
    """A DVC experiment name (a valid git ref) for this flow run."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in (run_name or "run"))
    return f"prefect-{safe}"


@flow(name="resnet-pipeline")
def resnet_pipeline(
    dataset: str | None = None,
    model: str | None = None,
    overrides: list[str] | None = None,
    nproc_per_node: int = 1,
    run_tags: dict[str, str] | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    save_experiment: bool = True,
    workspace: str | None = None,
) -> dict[str, Any]:
    """Run the DVC pipeline (prepare, preprocess, train, evaluate, register) in a workspace.

    Args:
        dataset: ``cifar10`` or ``imagenet``; None keeps ``params.yaml``'s.
        model: ``train.model``, any name ``resnet models`` lists; None keeps ``params.yaml``'s.
        overrides: More ``key=value`` changes to ``params.yaml``, e.g.
            ``train.schedule.length=1000``. All are checked before any stage runs, then written
            into the workspace's ``params.yaml`` (as ``dvc exp run -S`` does) so that
            ``dvc.lock`` records them.
        nproc_per_node: Training processes (GPUs) on this machine; over 1, the train stage
            runs distributed.
        run_tags: Extra tags for the MLflow training run (a grid's parent run).
        retries: Retries of a failed stage; a retried train stage resumes its checkpoint.
        retry_delay_seconds: Wait before each retry.
        save_experiment: Also record the result as a DVC experiment (``dvc exp show``).
        workspace: The project folder (a DVC repository); default: the working directory.
            It must lie in the deployment's folder or one the worker's ``RESNET_WORKSPACES``
            lists (:func:`pipelines.workspace.flow_workspace`).

    Returns:
        The outcome: model, MLflow run id and link, metrics, champion decision.
    """
    # First of all: the API's caller chose this path; nothing may read or run there unchecked.
    root = flow_workspace(workspace)
    logger = get_run_logger()
    changes = run_overrides(dataset, model, overrides)
    validate_params(root / "params.yaml", changes)  # a bad key fails here, at once
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node: expected 1 or more, got {nproc_per_node}")
    stages = pipeline_stages(root)
    logger.info("stages from dvc.yaml: %s", " -> ".join(stages))
    with workspace_lock(root) as lock:
        logger.info("holding workspace %s (concurrency limit %s)", root, lock)
        # Checked again: another run may have changed params.yaml while this one waited.
        tree = validate_params(root / "params.yaml", changes)
        write_params(root / "params.yaml", changes)
        for stage in stages:
            run_stage.with_options(
                name=stage, retries=retries, retry_delay_seconds=retry_delay_seconds
            )(stage, root, stage_env(stage, run_tags, nproc_per_node))
        if save_experiment and (root / ".git").exists():
            record_experiment(root, experiment_name(flow_run.get_name()))
        outcome = read_outcome(root, tree["dataset"], tree["train"]["model"])
    publish(outcome, flow_run.get_name())
    return outcome.as_dict()


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options both flows take (``python -m pipelines.<flow>``)."""
    parser.add_argument("--dataset")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--no-experiment", action="store_true", help="skip dvc exp save")
    parser.add_argument("--workspace")


def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters :func:`add_run_arguments`'s options give."""
    return {
        "dataset": args.dataset,
        "overrides": args.override,
        "nproc_per_node": args.nproc_per_node,
        "retries": args.retries,
        "save_experiment": not args.no_experiment,
        "workspace": args.workspace,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.pipeline``: run the flow here, no Prefect server needed."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.pipeline", description=__doc__)
    parser.add_argument("--model")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    state = resnet_pipeline(model=args.model, **run_arguments(args), return_state=True)
    if not state.is_completed():
        sys.exit(f"resnet-pipeline: {state.message}")


if __name__ == "__main__":
    main()
