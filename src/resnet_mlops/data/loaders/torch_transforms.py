"""The fallback's per-sample transforms: torchvision ops with the DALI pipelines' conventions.

Where torchvision's defaults differ from DALI's (rounding of the resized size and of the
centre-crop offset), these follow DALI, so that evaluation outputs agree to decoder rounding.
"""

from __future__ import annotations

import math
import random

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from resnet_mlops.data.loaders.recipe import (
    CIFAR_PAD,
    CIFAR_SIDE,
    CROP,
    EVAL_SHORTER,
    FIVE_CROPS,
    RRC_AREA,
    RRC_RATIO,
    SCALE_SHORTER,
    ImagenetMode,
)


def cifar10_train_augment() -> v2.Transform:
    """Zero-pad 4, random 32x32 crop, random horizontal flip, on a normalised CHW tensor."""
    return v2.Compose(
        [v2.RandomCrop(CIFAR_SIDE, padding=CIFAR_PAD, fill=0), v2.RandomHorizontalFlip(0.5)]
    )


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def resize_shorter(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize a CHW image so its shorter side is ``shorter``, rounding the longer as DALI does."""
    height, width = image.shape[-2:]
    ratio = shorter / min(height, width)
    size = [
        max(shorter, _round_half_up(height * ratio)),
        max(shorter, _round_half_up(width * ratio)),
    ]
    return F.resize(image, size, antialias=True)


def crop_at(image: torch.Tensor, x: float, y: float, size: int = CROP) -> torch.Tensor:
    """A ``size`` crop whose corner is at the normalised position ``(x, y)``, as DALI's
    ``crop_pos_x/y``: offsets are rounded half away from zero (torchvision's centre crop rounds
    half to even, one pixel off for odd margins)."""
    height, width = image.shape[-2:]
    top, left = _round_half_up(y * (height - size)), _round_half_up(x * (width - size))
    return image[..., top : top + size, left : left + size]


def decode_rgb(data: bytearray) -> torch.Tensor:
    """Decode JPEG bytes to a uint8 RGB CHW tensor (grayscale expanded to three channels).

    Raises:
        RuntimeError: the bytes are not a decodable JPEG; see :func:`decode_error_reason`.
    """
    return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_error_reason(error: Exception) -> str:
    """libjpeg's words from a torchvision decode error, without the C++ source location."""
    lines = str(error).strip().splitlines()
    return lines[0].rsplit(", ", 1)[-1] if lines else type(error).__name__


class ImagenetTransform:
    """Decoded uint8 CHW image in, normalised float out: (3, 224, 224), or (10, 3, 224, 224)
    for ``ten_crop`` (four corners and centre, then the same five mirrored)."""

    def __init__(self, mode: ImagenetMode, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mode = mode
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.random_resized_crop = v2.RandomResizedCrop(
            CROP, scale=RRC_AREA, ratio=RRC_RATIO, antialias=True
        )

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() - self.mean) / self.std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        flip = random.random() < 0.5
        if self.mode == "random_resized_crop":
            image = self.random_resized_crop(image)
        elif self.mode == "scale":
            image = resize_shorter(image, random.randint(*SCALE_SHORTER))
            image = crop_at(image, random.random(), random.random())
        elif self.mode in ("center_crop", "ten_crop"):
            image, flip = resize_shorter(image, EVAL_SHORTER), False
            if self.mode == "ten_crop":
                crops = torch.stack([crop_at(image, x, y) for x, y in FIVE_CROPS])
                return self._normalize(torch.cat([crops, crops.flip(-1)]))
            image = crop_at(image, 0.5, 0.5)
        else:
            raise ValueError(f"unknown ImageNet mode {self.mode!r}")
        image = self._normalize(image)
        return image.flip(-1) if flip else image
