"""The input pipelines' knobs: the ``loader`` section of ``params.yaml``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from resnet_mlops.params.base import Section

Dataset = Literal["cifar10", "imagenet"]
Backend = Literal["auto", "dali", "torch"]
CifarNormalization = Literal["pixel", "channel"]
ImagenetAugmentation = Literal["random_resized_crop", "scale"]
MemoryFormat = Literal["contiguous", "channels_last"]

# The statistics every torchvision ImageNet model is trained with, in 0..255 units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class LoaderParams(Section):
    """How the training and evaluation batches are produced.

    Attributes:
        backend: ``"dali"``, ``"torch"`` (torchvision + ``torch.utils.data``), or ``"auto"``:
            DALI wherever it imports.
        num_threads: DALI CPU threads, or DataLoader worker processes: the same number, so the
            two backends are compared on equal terms.
        cifar_normalization: ``"pixel"`` subtracts the per-pixel mean image of the training
            split (paper section 4.2); ``"channel"`` the per-channel mean. Both then divide by
            the per-channel standard deviation, so the network sees unit-scale inputs either way.
        imagenet_augmentation: ``"random_resized_crop"`` (scale 0.08-1, ratio 3/4-4/3, the
            common recipe) or ``"scale"``, the paper's section 3.4: shorter side random in
            [256, 480], then a random 224 crop.
    """

    backend: Backend = "auto"
    num_threads: Annotated[int, Field(ge=1)] = 2
    cifar_normalization: CifarNormalization = "pixel"
    imagenet_augmentation: ImagenetAugmentation = "random_resized_crop"
