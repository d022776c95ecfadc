"""``resnet train``: read params and the environment, attach MLflow, then call :func:`train`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from resnet_mlops.data.loaders import LoaderParams
from resnet_mlops.engine.checkpoint import peek_checkpoint, remove_stale_temporaries
from resnet_mlops.engine.runtime import require_device
from resnet_mlops.io import check_output_file
from resnet_mlops.models import MODELS
from resnet_mlops.params.base import ConfigError, load_sections
from resnet_mlops.params.train import TrainParams
from resnet_mlops.train.curves import plot_training_curves
from resnet_mlops.train.loop import (
    Interrupted,
    TrainJob,
    TrainPaths,
    TrainResult,
    TrainState,
    train,
)
from resnet_mlops.train.outdir import lock_output
from resnet_mlops.train.resume import data_version, mismatch, resume_key
from resnet_mlops.train.stop import StopRequest, watch_launcher

# The stages upstream of training: under `dvc repro` their dvc.lock entries are current when
# train starts (train's own entry is recorded after it; `resnet register` tags that one).
UPSTREAM_STAGES = ("prepare", "preprocess")


# What a user compares runs by; logged first (see _TrackerSink.log_metrics).
HEADLINE_METRICS = ("val_error", "train_error")

# Run tags naming the process that writes the run: a later resnet train in the same folder
# ends the run KILLED if that process is gone (see _end_dead_runs).
HOST_TAG = "resnet.host"
PID_TAG = "resnet.pid"
OUT_TAG = "resnet.out"
ENDED_TAG = "resnet.ended"


def load_train_params(
    params_path: Path, overrides: list[str]
) -> tuple[str, TrainParams, LoaderParams, dict]:
    """The data set, the ``train`` and ``loader`` sections, and the whole params tree."""
    dataset, sections, tree = load_sections(
        params_path, {"train": TrainParams, "loader": LoaderParams}, overrides
    )
    train_params: TrainParams = sections["train"]
    if train_params.model not in MODELS:
        raise ConfigError(
            f"{params_path}: train.model: unknown model {train_params.model!r} "
            f"(known: {', '.join(MODELS)})"
        )
    return dataset, train_params, sections["loader"], tree


def _auto_resume(checkpoint: Path, key: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` exists and was written under ``key``; says so when it is not."""
    if not checkpoint.exists():
        return False
    stored = peek_checkpoint(checkpoint)
    why = "not a readable checkpoint" if stored is None else mismatch(stored.get("resume_key"), key)
    if why is None:
        return True
    print(f"not resuming {checkpoint}: {why}; starting afresh", file=sys.stderr)
    return False


def _read_yaml(path: Path) -> dict:
    """A YAML mapping, or empty when the file is missing or unreadable (lineage is optional)."""
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def _split_sizes(data_dir: Path) -> dict[str, int]:
    """The images per split that preprocess recorded in ``stats.json``; empty without one."""
    try:
        splits = json.loads((data_dir / "stats.json").read_text()).get("splits", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): int(v) for k, v in splits.items()} if isinstance(splits, dict) else {}


def _log_lineage(tracker: Any, uri: str, dataset: Any) -> None:
    """Log the input dataset to the open run and say where the run is, on stderr."""
    from mlflow import MlflowClient

    from resnet_mlops.lineage import run_url
    from resnet_mlops.mlflow_store import short_http_limits

    run_id, url = tracker.run_id, None
    if tracker.active:
        try:
            with short_http_limits():
                client = MlflowClient(uri)
                client.log_inputs(run_id, datasets=[dataset])
                url = run_url(uri, client.get_run(run_id).info.experiment_id, run_id)
        except Exception as error:  # the run is tracked either way; the input is an extra
            print(f"MLflow run {run_id}: input dataset not logged: {error}", file=sys.stderr)
    if run_id:
        print(f"MLflow run {run_id}: {url or uri}", file=sys.stderr)


def _run_status(uri: str, run_id: str) -> str | None:
    """The MLflow run's status, or None when it cannot be had (unknown run, server down)."""
    from mlflow import MlflowClient

    from resnet_mlops.mlflow_store import short_http_limits

    try:
        with short_http_limits():
            return MlflowClient(uri).get_run(run_id).info.status
    except Exception:  # unknown run or an unreachable server: nothing to settle here
        return None


def _checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run a checkpoint was written for, if it names one."""
    stored = peek_checkpoint(checkpoint) if checkpoint.exists() else None
    return ((stored or {}).get("train_state") or {}).get("run_id")


def process_tags(out: Path) -> dict[str, str]:
    """The run tags that tell which process on which machine writes which output folder."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), OUT_TAG: str(out.resolve())}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _end_dead_runs(uri: str, experiment: str, out: Path, keep: str | None) -> None:
    """Mark KILLED the RUNNING runs of ``resnet train`` processes of this machine, for this
    output folder, that are gone: killed (``kill -9``) before their first checkpoint, which
    is where :func:`_end_abandoned_run` would find them.

    Called with ``out`` locked, so no live ``resnet train`` writes to it; the pid is checked
    as well, and a pid in use again only leaves the run RUNNING. ``keep``: the run a resumed
    training continues. Nothing is done when the server cannot be reached.
    """
    from mlflow import MlflowClient

    from resnet_mlops.mlflow_store import short_http_limits

    host, folder = socket.gethostname(), str(out.resolve())
    try:
        with short_http_limits():
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                return
            runs = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")
            for run in runs:
                tags, run_id = run.data.tags, run.info.run_id
                pid = tags.get(PID_TAG, "")
                if run_id == keep or tags.get(OUT_TAG) != folder or tags.get(HOST_TAG) != host:
                    continue
                if not pid.isdigit() or _pid_alive(int(pid)):
                    continue
                why = f"its resnet train (pid {pid} on {host}) was gone; ended by the next one"
                client.set_tag(run_id, ENDED_TAG, why)
                client.set_terminated(run_id, status="KILLED")
                print(f"MLflow run {run_id}: {why}: RUNNING -> KILLED", file=sys.stderr)
    except Exception:  # noqa: S110 - an unreachable server: the tracker's warning says so
        pass


def _retag_owner(uri: str, run_id: str | None, owner: dict[str, str]) -> None:
    """Record this process as the writer of a resumed run (see :func:`_end_dead_runs`).

    Best effort: a server gone just now must not stop training; the run then keeps the dead
    pid, and the next training in this folder ends it if it is left RUNNING.
    """
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from resnet_mlops.mlflow_store import short_http_limits

    tag_list = [RunTag(key, value) for key, value in owner.items()]
    with contextlib.suppress(Exception), short_http_limits():
        MlflowClient(uri).log_batch(run_id, tags=tag_list, synchronous=True)


def _end_abandoned_run(checkpoint: Path, uri: str) -> None:
    """Mark KILLED the RUNNING MLflow run of a checkpoint that a fresh start replaces.

    Called with the output folder locked, so that run's writer is gone (``kill -9``, power
    loss); nothing else would ever end it.
    """
    run_id = _checkpoint_run_id(checkpoint)
    if not run_id or _run_status(uri, run_id) != "RUNNING":
        return
    from mlflow import MlflowClient

    from resnet_mlops.mlflow_store import short_http_limits

    try:
        with short_http_limits():
            MlflowClient(uri).set_terminated(run_id, status="KILLED")
    except Exception as error:
        print(f"could not end abandoned MLflow run {run_id}: {error}", file=sys.stderr)
        return
    print(f"MLflow run {run_id} of the replaced {checkpoint}: RUNNING -> KILLED", file=sys.stderr)


class _TrackerSink:
    """Opens the MLflow run once training knows whether it resumes one, then forwards metrics."""

    def __init__(
        self,
        experiment: str,
        uri: str,
        history: Path,
        params: dict,
        tags: dict,
        version: str,
        run_name: str,
        dataset: Any = None,
    ) -> None:
        self.settings = (experiment, uri, history, run_name)
        self.params, self.tags, self.version = params, tags, version
        self.dataset = dataset  # lineage.dataset_input: the run's input
        self.tracker: Any = None

    def on_start(self, state: TrainState) -> str | None:
        from resnet_mlops.tracking import RunTracker

        experiment, uri, history, run_name = self.settings
        run_id, tags = state.run_id, self.tags
        if run_id is not None and _run_status(uri, run_id) == "FINISHED":
            # A finished run may be registered already: a resume that trains on (an explicit
            # --resume with a longer schedule) gets a run of its own instead of reopening it.
            print(
                f"MLflow run {run_id} is FINISHED; recording this resumed training in a new run",
                file=sys.stderr,
            )
            run_id, tags = None, {**tags, "resumed_from": state.run_id}
        owner = process_tags(history.parent)
        self.tracker = RunTracker(
            experiment=experiment,
            tracking_uri=uri,
            run_name=run_name,
            run_id=run_id,
            history_path=history,
            resumed=state.iteration > 0,  # keeps the journal of a run the server never saw
        )
        # A new run gets them as it is created (a kill right after leaves no run without them).
        new = {**tags, **owner} if run_id is None else tags
        started = self.tracker.start(self.params, new, data_version=self.version)
        if run_id is not None and self.tracker.active:  # a resumed run: now this process's
            _retag_owner(uri, started, owner)
        _log_lineage(self.tracker, uri, self.dataset)
        return started

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            # The error rates first: MLflow's compare view defaults to a run's first metric.
            first = {key: metrics[key] for key in HEADLINE_METRICS if key in metrics}
            self.tracker.log_metrics({**first, **metrics}, step)

    def finish(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)


@dataclass(frozen=True)
class StageOptions:
    """What the dvc.yaml train stage adds to a plain ``resnet train``."""

    # Also stop (checkpoint, Interrupted) when the process that launched this one exits, e.g.
    # a killed `dvc repro` (see resnet_mlops.train.stop).
    stop_with_parent: bool = False
    # Also write the few figures experiments are compared by here (train.COMPARED_METRICS:
    # the DVC metrics `dvc exp show` lists); the metrics file has them all.
    headline: Path | None = None


def _check_outputs(paths: TrainPaths) -> None:
    """Refuse, before any work, output files ``resnet train`` did not write."""
    check_output_file(paths.metrics, "train --metrics")
    check_output_file(paths.history, "train --history")
    if paths.headline is not None:
        check_output_file(paths.headline, "train --headline")


def run_training(
    params_path: Path,
    overrides: list[str],
    data: Path | None,
    out: Path,
    metrics: Path,
    history: Path,
    resume: bool | Literal["auto"],
    *,
    options: StageOptions = StageOptions(),
) -> TrainResult:
    """Parse, lock ``out``, attach the tracker (rank 0 only), train, then log curves and model.

    ``resume="auto"`` continues from the checkpoint in ``out`` only if the resume key stored in
    it (see :mod:`resnet_mlops.train.resume`) equals this run's: the same data set, ``train``
    and ``loader`` params, data version and train-stage code; otherwise training starts afresh.
    A checkpoint that has already finished is not trained further: the outputs are rewritten
    from it, and its MLflow run is completed only if its writer died leaving it RUNNING.

    Args:
        options: what the dvc.yaml stage adds (stop with ``dvc repro``, the headline file).

    Raises:
        ConfigError: bad params.
        OutputBusy: another ``resnet train`` writes to ``out``.
        OutputError: ``metrics``, ``history`` or ``headline`` is a file ``resnet train`` did
            not write.
        CheckpointError: a checkpoint that cannot be resumed.
        Interrupted: SIGTERM, or the launcher exited; the checkpoint was saved.
    """
    from resnet_mlops.lineage import env_tags, git_tags
    from resnet_mlops.mlflow_store import tracking_uri

    dataset, train_params, loader_params, tree = load_train_params(params_path, overrides)
    require_device(params_path, "train.device", train_params.device)
    extra_tags = env_tags()  # a bad RESNET_RUN_TAGS fails here, before any file is touched
    paths = TrainPaths(out / "checkpoint.pt", out / "model.pt", metrics, history, options.headline)
    _check_outputs(paths)
    data_dir = data or Path("data/preprocessed") / dataset
    root = Path.cwd()
    uri = tracking_uri(root)
    version = data_version(data_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    key = resume_key(dataset, train_params, loader_params, version)
    stop = StopRequest()
    with contextlib.ExitStack() as scope:
        scope.enter_context(stop.on_sigterm())
        if options.stop_with_parent:
            scope.callback(watch_launcher(stop))
        if rank0:  # the only writer of `out` (other ranks may not even share its disk)
            _claim_output(scope, out, paths)
        if resume == "auto":
            # Rank 0 decides for all ranks (train() sends its checkpoint to the others).
            resume = rank0 and _auto_resume(paths.checkpoint, key)
        if not resume and rank0:
            _end_abandoned_run(paths.checkpoint, uri)
        if rank0:
            keep = _checkpoint_run_id(paths.checkpoint) if resume else None
            _end_dead_runs(uri, train_params.experiment, out, keep)
        base_tags = {
            **git_tags(root),
            "dataset": dataset,
            "model": train_params.model,
            **extra_tags,
        }
        job = TrainJob(
            dataset,
            train_params,
            loader_params,
            data_dir,
            paths,
            config=tree,
            provenance={"data_version": version, **base_tags},
            resume_key=key,
        )
        sink = _tracker_sink(job, base_tags, extra_tags, root, uri, out)
        return _train_tracked(job, sink if rank0 else None, resume=resume, stop=stop, uri=uri)


def _tracker_sink(
    job: TrainJob,
    base_tags: dict[str, str],
    extra_tags: dict[str, str],
    root: Path,
    uri: str,
    out: Path,
) -> _TrackerSink:
    """The MLflow side of a run: its tags (``base_tags``, the environment's and the upstream
    stages' lineage, ``extra_tags`` over them, then its description), its input data set, its
    name and its journal in ``out``."""
    from resnet_mlops.lineage import (
        NOTE_TAG,
        dataset_input,
        env_lineage_tags,
        lock_tags,
        run_description,
        run_name,
    )

    dataset, params, data_dir = job.dataset, job.params, job.data_dir
    version = job.provenance["data_version"]
    tags = {
        **base_tags,
        **env_lineage_tags(os.environ),
        **lock_tags(_read_yaml(root / "dvc.lock"), UPSTREAM_STAGES),
        **extra_tags,
    }
    tags[NOTE_TAG] = run_description(params.model, dataset, params.schedule, version, tags)
    inputs = dataset_input(dataset, data_dir.resolve(), version, _split_sizes(data_dir))
    return _TrackerSink(
        params.experiment,
        uri,
        out / "mlflow-history.jsonl",
        job.config,
        tags,
        version,
        run_name(params.model, params.schedule),
        inputs,
    )


def _claim_output(scope: contextlib.ExitStack, out: Path, paths: TrainPaths) -> None:
    """Lock ``out`` for this run (held until ``scope`` closes) and remove the temporary files
    a killed run left there."""
    scope.enter_context(lock_output(out))
    for path in (paths.checkpoint, paths.model):
        for leftover in remove_stale_temporaries(path):
            print(f"removed {leftover}, left by a killed resnet train", file=sys.stderr)


def _train_tracked(
    job: TrainJob, sink: _TrackerSink | None, *, resume: bool, stop: StopRequest, uri: str
) -> TrainResult:
    """Train, then log the outcome; the MLflow run ends KILLED or FAILED if training does."""
    try:
        result = train(
            job,
            resume=resume,
            sink=sink,
            on_start=sink.on_start if sink else None,
            stop=stop,
        )
        if sink is not None:
            _log_outcome(sink, result, stop, job, uri)
    except Interrupted:
        if sink:
            sink.finish("KILLED")
        raise
    except BaseException:
        if sink:
            sink.finish("FAILED")
        raise
    return result


def _log_outcome(
    sink: _TrackerSink,
    result: TrainResult,
    stop: StopRequest,
    job: TrainJob,
    uri: str,
) -> None:
    """Log the curves and the model to the run, and end it FINISHED.

    Raises:
        Interrupted: a stop was requested after training; the outputs are written, the run
            ends KILLED without the curves and model.
    """
    paths, dataset, model = job.paths, job.dataset, job.params.model
    if result.rebuilt:
        status = _run_status(uri, result.run_id) if result.run_id else None
        print(
            f"{paths.checkpoint} had already finished ({result.iterations} iterations): "
            f"outputs rewritten from it, nothing trained",
            file=sys.stderr,
        )
        if status != "RUNNING":  # ended (or untracked): never reopened, nothing added
            return
        # Its writer died between the last checkpoint and the end of the run: complete it.
        sink.on_start(TrainState(run_id=result.run_id))
    if stop.requested:
        raise Interrupted(
            f"stopped ({stop.reason}) after training; outputs written, "
            "curves and model not logged to MLflow"
        )
    if sink.tracker is None:
        return
    curves = paths.checkpoint.parent / "training_curves.png"  # beside it, in `out`
    plot_training_curves(result.history, curves, f"{model} on {dataset}")
    sink.tracker.log_artifact(curves, "plots")
    sink.tracker.log_artifact(paths.history, "plots")
    sink.tracker.log_model(paths.model)
    sink.finish("FINISHED")
