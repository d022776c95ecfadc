"""The ``evaluate`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from resnet_mlops.params.base import Section
from resnet_mlops.params.train import Device


class EvaluateParams(Section):
    """The ``evaluate`` section of params.yaml."""

    split: Literal["train", "val", "test"]  # test for CIFAR-10 (10k images); val for ImageNet
    batch_size: Annotated[int, Field(ge=1)]
    ten_crop: bool  # ImageNet: also the paper's 10-crop test (corners + centre, and flips)
    device: Device
