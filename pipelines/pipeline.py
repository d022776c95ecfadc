"""The pipeline flow: every ``dvc.yaml`` stage as one Prefect task, run through ``dvc repro``.

    python -m pipelines.pipeline --model resnet32 --override train.schedule.length=1000 \
        --override 'train.schedule.milestones=[500,750]'

Each task runs ``dvc repro --single-item <stage>``, so DVC decides whether the stage must run
(its deps and params changed) and records it in ``dvc.lock``; the stage's ``resnet`` command
is the one ``dvc repro`` runs. Prefect adds per-stage state, logs and durations, retries, one
run at a time per workspace (:mod:`pipelines.workspace`) and the run's artifacts.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from pipelines.dag import git_tracked_outputs, pipeline_stages
from pipelines.summary import publish, read_outcome
from pipelines.workspace import (
    flow_workspace,
    params_for_run,
    run_overrides,
    validate_params,
    workspace_lock,
)
from resnet_mlops.lineage import DVC_EXP_TAG, FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG, RUN_TAGS_ENV

TRAIN_STAGE = "train"
# torchrun's environment form of --nproc_per_node; `resnet train` honours it.
NPROC_ENV = "PET_NPROC_PER_NODE"
LOG_TAIL_LINES = 30
# The MLflow run's tag holding the flow run's one-off params.yaml changes (a JSON list).
OVERRIDES_TAG = "overrides"
# What `dvc repro` prints after every stage for a person at a terminal: "git add dvc.lock",
# "dvc config core.autostage true", "dvc push". The flow saves the run with `dvc exp save`, so
# the hint is noise, repeated per stage. `dvc repro -q` would drop it but also DVC's errors
# (it sets the log level to CRITICAL), and DVC has no setting for it alone: the lines are left
# out of the log here (a failed stage's message still has every line).
DVC_HINT_START = "To track the changes with git, run:"
DVC_HINT_END = "dvc config core.autostage true"
DVC_PUSH_HINT = "Use `dvc push` to send your updates to remote storage."


class StageFailed(RuntimeError):
    """A stage's command exited with an error; the message ends with its last output lines."""


def _command_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, with this interpreter's tools (``dvc``, ``resnet``) first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", **extra}


class DvcHintFilter:
    """Drops DVC's "to track the changes with git" hint from a stream of output lines."""

    def __init__(self) -> None:
        self._in_hint = False

    def keep(self, line: str) -> bool:
        """Whether ``line`` (without its newline) belongs in the log."""
        text = line.strip()
        if text == DVC_HINT_START:
            self._in_hint = True
        if self._in_hint:
            self._in_hint = text != DVC_HINT_END
            return False
        # The hint's blank separators, and any others: an empty log record says nothing.
        return bool(text) and text != DVC_PUSH_HINT


def run_command(command: list[str], cwd: Path, extra_env: dict[str, str]) -> None:
    """Run ``command`` in ``cwd``, streaming its output to the Prefect log.

    Raises:
        StageFailed: it exited non-zero (its last lines are in the message).
    """
    logger = get_run_logger()
    hint = DvcHintFilter()
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
            if hint.keep(line):
                logger.info(line)
        code = process.wait()
    if code != 0:
        output = "\n".join(tail)
        raise StageFailed(f"{' '.join(command)} exited with {code}:\n{output}")


@functools.cache
def stage_task(stage: str) -> Task[[Path, dict[str, str]], str]:
    """The task that runs one ``dvc.yaml`` stage through DVC; a retried train stage resumes
    its checkpoint (its command has ``--auto-resume``).

    Each stage gets its own task, with its own task key: Prefect derives the key from the
    function's name and code, so one function renamed per stage (``with_options(name=...)``)
    gave all stages one key. The function here is named after the stage.
    """

    def run(workspace: Path, extra_env: dict[str, str]) -> str:
        command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
        run_command(command, workspace, extra_env)
        return stage

    run.__name__ = run.__qualname__ = f"stage_{stage}"
    # Prefect's result cache is off: it cannot see the workspace. DVC is the cache here: a
    # stage whose code, data and params are unchanged is skipped, its outputs restored from
    # .dvc/cache.
    return task(run, name=stage, task_run_name=stage, cache_policy=NO_CACHE)


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


def lineage_run_tags(
    run_tags: dict[str, str] | None,
    changes: list[str],
    flow_run_id: str | None,
    flow_run_url: str | None,
    dvc_experiment: str | None,
) -> dict[str, str]:
    """The training run's tags from this flow run: the caller's, the overrides, and the
    lineage key (the flow run's id and page, the DVC experiment the flow will save)."""
    tags = dict(run_tags or {})
    if changes:
        tags[OVERRIDES_TAG] = json.dumps(changes)
    if flow_run_id:
        tags[FLOW_RUN_ID_TAG] = flow_run_id
    if flow_run_id and flow_run_url and not flow_run_url.startswith("None"):
        tags[FLOW_RUN_URL_TAG] = flow_run_url  # "None/..." when Prefect knows no UI address
    if dvc_experiment:
        tags[DVC_EXP_TAG] = dvc_experiment
    return tags


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
    persist_overrides: bool = False,
) -> dict[str, Any]:
    """Run the DVC pipeline (prepare, preprocess, train, evaluate, register) in a workspace.

    Args:
        dataset: ``cifar10`` or ``imagenet``; None keeps ``params.yaml``'s.
        model: ``train.model``, any name ``resnet models`` lists; None keeps ``params.yaml``'s.
        overrides: More ``key=value`` changes to ``params.yaml``, e.g.
            ``train.schedule.length=1000``. All are checked before any stage runs, then written
            into the workspace's ``params.yaml`` (as ``dvc exp run -S`` does) so that
            ``dvc.lock`` and the run's DVC experiment record them. They are for this run
            only: ``params.yaml`` is put back byte for byte when the run ends, unless
            ``persist_overrides``. The MLflow run's ``overrides`` tag and the Prefect
            summary list them.
        nproc_per_node: Training processes (GPUs) on this machine; over 1, the train stage
            runs distributed.
        run_tags: Extra tags for the MLflow training run (a grid's parent run).
        retries: Retries of a failed stage; a retried train stage resumes its checkpoint.
        retry_delay_seconds: Wait before each retry.
        save_experiment: Also record the result as a DVC experiment (``dvc exp show``).
        workspace: The project folder (a DVC repository); default: the working directory.
            It must lie in the deployment's folder or one the worker's ``RESNET_WORKSPACES``
            lists (:func:`pipelines.workspace.flow_workspace`).
        persist_overrides: Leave ``dataset``, ``model`` and ``overrides`` in ``params.yaml``
            after the run, so later runs use them too.

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
        save = save_experiment and (root / ".git").exists()
        dvc_experiment = experiment_name(flow_run.get_name()) if save else None
        tags = lineage_run_tags(
            run_tags, changes, flow_run.get_id(), flow_run.ui_url, dvc_experiment
        )
        with params_for_run(root / "params.yaml", changes, persist=persist_overrides):
            for stage in stages:
                stage_task(stage).with_options(
                    retries=retries, retry_delay_seconds=retry_delay_seconds
                )(root, stage_env(stage, tags, nproc_per_node))
            if dvc_experiment:
                record_experiment(root, dvc_experiment)
        if changes and not persist_overrides:
            logger.info("params.yaml is back as it was; this run's overrides: %s", changes)
        outcome = read_outcome(root, tree["dataset"], tree["train"]["model"])
        outcome.overrides = changes
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
    parser.add_argument(
        "--persist-overrides", action="store_true", help="keep the overrides in params.yaml"
    )


def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters :func:`add_run_arguments`'s options give."""
    return {
        "dataset": args.dataset,
        "overrides": args.override,
        "nproc_per_node": args.nproc_per_node,
        "retries": args.retries,
        "save_experiment": not args.no_experiment,
        "workspace": args.workspace,
        "persist_overrides": args.persist_overrides,
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
