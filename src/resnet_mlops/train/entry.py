"""``resnet train``: read params and the environment, attach MLflow, then call :func:`train`."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np

import resnet_mlops
from resnet_mlops.config import ConfigError, load_sections, to_dict
from resnet_mlops.data.io import write_json_atomic
from resnet_mlops.data.loaders import LoaderParams
from resnet_mlops.evaluation.plots import plot_training_curves
from resnet_mlops.models import MODELS
from resnet_mlops.train.loop import Interrupted, TrainPaths, TrainResult, TrainState, train
from resnet_mlops.train.params import TrainParams


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


def data_version(data_dir: Path) -> str:
    """A short content hash of the preprocessed data: its manifest lists every file's SHA-256."""
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        return "unknown"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


RESUME_KEY_FILE = "resume_key.json"


def code_version() -> str:
    """A hash of this package's source: a checkpoint is resumed only by the code that wrote it."""
    package = Path(resnet_mlops.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def resume_key(
    dataset: str, train_params: TrainParams, loader_params: LoaderParams, version: str
) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed by ``--auto-resume``."""
    key = {
        "dataset": dataset,
        "train": to_dict(train_params),
        "loader": to_dict(loader_params),
        "data_version": version,
        "code_version": code_version(),
    }
    return json.loads(json.dumps(key))  # as read back from the file: lists, not tuples


def _matches(checkpoint: Path, key_file: Path, key: dict[str, Any]) -> bool:
    """Whether ``checkpoint`` exists and was written under ``key``; says so when it is not."""
    if not checkpoint.exists():
        return False
    try:
        if json.loads(key_file.read_text()) == key:
            return True
    except (OSError, ValueError):
        pass
    print(
        f"not resuming {checkpoint}: not written for these params, data and code; starting afresh",
        file=sys.stderr,
    )
    return False


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
    ) -> None:
        self.settings = (experiment, uri, history, run_name)
        self.params, self.tags, self.version = params, tags, version
        self.tracker: Any = None

    def on_start(self, state: TrainState) -> str | None:
        from resnet_mlops.tracking import RunTracker

        experiment, uri, history, run_name = self.settings
        self.tracker = RunTracker(
            experiment=experiment,
            tracking_uri=uri,
            run_name=run_name,
            run_id=state.run_id,
            history_path=history,
            resumed=state.iteration > 0,  # keeps the journal of a run the server never saw
        )
        return self.tracker.start(self.params, self.tags, data_version=self.version)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)

    def finish(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)


def run_training(
    params_path: Path,
    overrides: list[str],
    data: Path | None,
    out: Path,
    metrics: Path,
    history: Path,
    resume: bool | Literal["auto"],
) -> TrainResult:
    """Parse, attach the tracker (rank 0 only), train, then log curves and the model.

    ``resume="auto"`` continues from the checkpoint in ``out`` only if it was written for the
    same data set, ``train`` and ``loader`` params, data version and code (see
    :func:`resume_key`); otherwise training starts afresh.
    """
    from resnet_mlops.tracking import env_tags, git_tags, tracking_uri

    dataset, train_params, loader_params, tree = load_train_params(params_path, overrides)
    extra_tags = env_tags()  # a bad RESNET_RUN_TAGS fails here, before any file is touched
    data_dir = data or Path("data/preprocessed") / dataset
    paths = TrainPaths(out / "checkpoint.pt", out / "model.pt", metrics, history)
    root = Path.cwd()
    version = data_version(data_dir)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    key = resume_key(dataset, train_params, loader_params, version)
    if resume == "auto":
        # Rank 0 decides for all ranks (train() sends its checkpoint to the others).
        resume = rank0 and _matches(paths.checkpoint, out / RESUME_KEY_FILE, key)
    if not resume and rank0:
        # A fresh run voids the old checkpoint before it records its own key: a checkpoint
        # next to a key is always one that key's run wrote.
        paths.checkpoint.unlink(missing_ok=True)
        write_json_atomic(out / RESUME_KEY_FILE, key)
    tags = {**git_tags(root), "dataset": dataset, "model": train_params.model, **extra_tags}
    sink = (
        _TrackerSink(
            train_params.experiment,
            tracking_uri(root),
            out / "mlflow-history.jsonl",
            tree,
            tags,
            version,
            train_params.model,
        )
        if rank0
        else None
    )
    try:
        result = train(
            dataset,
            train_params,
            loader_params,
            data_dir,
            paths,
            resume=resume,
            sink=sink,
            on_start=sink.on_start if sink else None,
            provenance={"data_version": version, **tags},
            config=tree,
        )
    except Interrupted:
        if sink:
            sink.finish("KILLED")
        raise
    except BaseException:
        if sink:
            sink.finish("FAILED")
        raise
    if sink is not None and sink.tracker is not None:
        curves = out / "training_curves.png"
        plot_training_curves(result.history, curves, f"{train_params.model} on {dataset}")
        sink.tracker.log_artifact(curves, "plots")
        sink.tracker.log_artifact(history, "plots")
        size = 32 if dataset == "cifar10" else 224
        example = np.random.default_rng(0).standard_normal((2, 3, size, size), np.float32)
        sink.tracker.log_model(result.model.cpu().eval(), example)
        sink.finish("FINISHED")
    return result
