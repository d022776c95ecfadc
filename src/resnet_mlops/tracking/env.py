"""Extra run tags handed down through the environment, e.g. a grid's parent run.

A grid (the Prefect grid flow, ``resnet grid``) starts each child through ``dvc repro`` or
``resnet train``, whose command lines are fixed by dvc.yaml; the environment is the one channel
that reaches the trainer unchanged. ``RESNET_RUN_TAGS`` holds a JSON object of string tags,
e.g. ``{"mlflow.parentRunId": "<id>", "grid": "paper-cifar10"}``: MLflow's UI nests a run under
the run named by ``mlflow.parentRunId``.
"""

from __future__ import annotations

import json
import os

from resnet_mlops.params.base import ConfigError

RUN_TAGS_ENV = "RESNET_RUN_TAGS"


def env_tags() -> dict[str, str]:
    """The tags in ``RESNET_RUN_TAGS``; empty when it is unset or blank.

    Raises:
        ConfigError: The variable is not a JSON object of strings.
    """
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{RUN_TAGS_ENV}: not JSON: {error}") from None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ConfigError(f"{RUN_TAGS_ENV}: expected a JSON object of string values")
    return tags
