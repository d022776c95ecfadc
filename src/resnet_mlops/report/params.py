"""The ``report`` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportParams:
    """What ``resnet report`` draws and from which runs.

    Attributes:
        experiment: The MLflow experiment; ``auto``: ``train.experiment``.
        grid: Only runs tagged ``grid=<grid>``; empty: every finished run of the experiment.
        response_images: CIFAR-10 test images Figure 7's layer responses are measured on.
    """

    experiment: str = "auto"
    grid: str = ""
    response_images: int = 1000

    def __post_init__(self) -> None:
        if self.response_images < 1:
            raise ValueError(
                f"report.response_images: must be at least 1, got {self.response_images}"
            )
