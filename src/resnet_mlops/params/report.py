"""The ``report`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from resnet_mlops.params.base import Section


class ReportParams(Section):
    """What ``resnet report`` draws and from which runs.

    Attributes:
        experiment: The MLflow experiment; ``auto``: ``train.experiment``.
        grid: Only runs tagged ``grid=<grid>``; empty: every finished run of the experiment.
        response_images: CIFAR-10 test images Figure 7's layer responses are measured on.
    """

    experiment: Annotated[str, Field(min_length=1)] = "auto"
    grid: str = ""
    response_images: Annotated[int, Field(ge=1)] = 1000
