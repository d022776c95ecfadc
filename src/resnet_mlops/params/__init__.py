"""The one model of ``params.yaml``: the data set and every stage's section, checked whole.

Each section's class has its own module here (``params/train.py``, ``params/prepare.py``,
...); :class:`Params` is the only list of them. ``resnet check-params``
(the first DVC stage) and every stage's own loading go through :func:`load_params`, so an
unknown key, a wrong type or a bad range anywhere in the file stops the pipeline before any
stage has deleted its outputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pydantic

from resnet_mlops.params.base import (
    ConfigError,
    Section,
    apply_overrides,
    describe_error,
    read_yaml,
)
from resnet_mlops.params.evaluate import EvaluateParams
from resnet_mlops.params.loader import LoaderParams
from resnet_mlops.params.prepare import Dataset, PrepareParams
from resnet_mlops.params.preprocess import PreprocessParams
from resnet_mlops.params.register import RegisterParams
from resnet_mlops.params.report import ReportParams
from resnet_mlops.params.train import MODEL_NAMES, TrainParams

with warnings.catch_warnings():
    # pydantic warns that the field "register" shadows ABCMeta.register, a method of the class
    # (never of an instance): params.register is the section.
    warnings.filterwarnings("ignore", 'Field name "register"', UserWarning)

    class Params(Section):
        """The whole of ``params.yaml``: one section per stage (see dvc.yaml)."""

        dataset: Dataset
        prepare: PrepareParams
        preprocess: PreprocessParams
        loader: LoaderParams
        train: TrainParams
        evaluate: EvaluateParams
        register: RegisterParams
        report: ReportParams = ReportParams()  # a pipeline without the report stage has none


def parse_params(tree: dict[str, Any], source: Path | str = "params.yaml") -> Params:
    """Validate a params tree; errors are one line: ``params.yaml: train.lr: ...``."""
    try:
        return Params.model_validate(tree)
    except pydantic.ValidationError as error:
        raise ConfigError(f"{source}: {describe_error(Params, error)}") from None


def load_params(
    path: Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Params, dict[str, Any]]:
    """``path`` with ``key=value`` ``overrides`` applied, validated whole.

    Returns:
        The model and the plain tree (what MLflow logs and the Prefect flows write back).

    Raises:
        ConfigError: one line naming the file and the key.
    """
    try:
        tree = apply_overrides(read_yaml(path), list(overrides), Params)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(f"{path}:") else f"{path}: {message}"
        ) from None
    return parse_params(tree, path), tree


def check_pipeline(params: Params, source: Path | str = "params.yaml") -> None:
    """What the pipeline as a whole needs beyond each section's own checks.

    ``train.model`` names a network of the zoo (:data:`MODEL_NAMES`), and the evaluated
    split exists for the data set. Not in the model:
    ``resnet prepare dataset=imagenet`` must not fail on the evaluate section's CIFAR-10
    default; ``resnet check-params`` (the first DVC stage), the Prefect flows and the studies
    run this before any stage does.

    Raises:
        ConfigError: one line naming the file and the key.
    """
    if params.train.model not in MODEL_NAMES:
        raise ConfigError(
            f"{source}: train.model: unknown model {params.train.model!r} "
            f"(known: {', '.join(MODEL_NAMES)})"
        )
    check_split(params, source)


def check_split(params: Params, source: Path | str = "params.yaml") -> None:
    """``evaluate.split`` exists for the data set: ImageNet has no test split, and CIFAR-10
    has a val split only when ``preprocess.cifar10.val_size`` holds images out.

    Raises:
        ConfigError: one line naming the file and the key.
    """
    split = params.evaluate.split
    if params.dataset == "imagenet" and split == "test":
        raise ConfigError(f"{source}: evaluate.split: ImageNet has no test split (use val)")
    if params.dataset == "cifar10" and split == "val" and not params.preprocess.cifar10.val_size:
        raise ConfigError(f"{source}: evaluate.split: 'val' needs preprocess.cifar10.val_size > 0")


__all__ = [
    "Params",
    "check_pipeline",
    "check_split",
    "load_params",
    "parse_params",
]
