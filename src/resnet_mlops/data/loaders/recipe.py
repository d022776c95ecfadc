"""What both backends compute, in one place: the augmentation constants and the output layout.

Kept free of DALI imports, so that the torchvision fallback works where DALI does not install.
"""

from __future__ import annotations

from typing import Literal

import torch

from resnet_mlops.params.loader import MemoryFormat

ImagenetMode = Literal["random_resized_crop", "scale", "center_crop", "ten_crop"]

# CIFAR-10, paper section 4.2: 4-pixel padding, random 32x32 crop (81 positions), flip.
CIFAR_SIDE = 32
CIFAR_PAD = 4
# ImageNet, paper section 3.4 and the common recipe.
CROP = 224
EVAL_SHORTER = 256
SCALE_SHORTER = (256, 480)  # inclusive
RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
# The ten-crop test: four corners and the centre, as normalised (x, y) crop positions, then the
# same five mirrored.
FIVE_CROPS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))


def to_memory_format(images: torch.Tensor, memory_format: MemoryFormat) -> torch.Tensor:
    """Channels-last strides for ``(..., C, H, W)`` (4-d or 5-d), or a contiguous tensor.

    For a ten-crop batch (B, 10, C, H, W), ``reshape(-1, C, H, W)`` keeps channels-last strides.
    """
    if memory_format == "channels_last":
        return images.movedim(-3, -1).contiguous().movedim(-1, -3)
    return images.contiguous()
