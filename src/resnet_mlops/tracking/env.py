"""Extra run tags handed down through the environment, e.g. a grid's parent run.

``dvc repro`` and ``resnet train`` have fixed command lines; the environment reaches the
trainer unchanged. ``RESNET_RUN_TAGS`` holds a JSON object of string tags, e.g.
``{"mlflow.parentRunId": "<id>", "grid": "paper-cifar10"}`` (MLflow's UI nests the run).
"""

from __future__ import annotations

import json
import os

from resnet_mlops.params.base import ConfigError

RUN_TAGS_ENV = "RESNET_RUN_TAGS"


def env_tags() -> dict[str, str]:
    """The tags in ``RESNET_RUN_TAGS`` (empty when unset); ConfigError if not JSON strings."""
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    try:
        tags = json.loads(text) if text else {}
    except ValueError as error:
        raise ConfigError(f"{RUN_TAGS_ENV}: not JSON: {error}") from None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ConfigError(f"{RUN_TAGS_ENV}: expected a JSON object of string values")
    return tags
