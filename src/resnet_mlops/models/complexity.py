"""Parameter and multiply-add counts, measured on the model rather than typed in."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_mlops.models.resnet import ResNet

INPUT_SIZES: dict[str, int] = {"cifar": 32, "imagenet": 224}


def input_size(model: ResNet) -> int:
    """The side of the square input a network was designed for (32 for CIFAR, 224 for ImageNet)."""
    return INPUT_SIZES[model.stem]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_multiply_adds(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass on a single ``3 x size x size`` image.

    Convolutions and the classifier, as the paper counts them ("FLOPs" in its Table 1 are
    multiply-adds). Runs on the model's device: a model built under ``torch.device("meta")``
    computes nothing, so even ResNet-1202 is counted in a moment.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # A train-mode pass would update the BN running statistics.
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, size, size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
