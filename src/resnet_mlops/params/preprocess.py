"""The ``preprocess`` section of params.yaml: the CIFAR-10 split and the ImageNet shards."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from resnet_mlops.params.base import Section


class Cifar10Preprocess(Section):
    """CIFAR-10 split: the paper holds out 5k of the 50k training images (0: train on all).

    ``train_size`` keeps a seeded, stratified subset of what is left for training (0: all of
    it), for studies that must fit a short budget.
    """

    val_size: Annotated[int, Field(ge=0)]
    seed: Annotated[int, Field(ge=0)]  # NumPy's generators take no negative seed
    train_size: Annotated[int, Field(ge=0)]


class ImagenetPreprocess(Section):
    """ImageNet shards: samples per shard, the longest shorter side kept (0: keep), and the
    JPEG quality of the images that must be re-encoded (CMYK, PNG, resized)."""

    shard_size: Annotated[int, Field(ge=1)]
    max_side: Annotated[int, Field(ge=0)]
    quality: Annotated[int, Field(ge=1, le=100)]  # Pillow's JPEG quality scale
    seed: Annotated[int, Field(ge=0)]


class PreprocessParams(Section):
    """The ``preprocess`` section of params.yaml."""

    cifar10: Cifar10Preprocess
    imagenet: ImagenetPreprocess
    skip_corrupt: bool
    workers: Annotated[int, Field(ge=0)]  # 0: every core
