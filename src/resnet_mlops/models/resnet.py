"""The residual and plain networks of He et al., "Deep Residual Learning for Image Recognition".

Shaped after torchvision's ``models/resnet.py``: small conv helpers, the two blocks, one
:class:`ResNet` class and thin keyword-only builders. The ImageNet networks keep torchvision's
state-dict keys and shapes, so a torchvision state dict loads with ``strict=True``.

Shortcut options (paper section 3.3):

* ``"A"``: identity; where the shape changes, subsample by the stride and append zero channels.
  No parameters. The paper's choice for CIFAR-10.
* ``"B"``: identity, with a 1x1 projection + BN only where the shape changes. The paper's (and
  torchvision's) choice for ImageNet.
* ``"C"``: a 1x1 projection + BN on every block.
* ``None``: no shortcut at all, the paper's "plain" baselines.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B", "C"] | None
Stem = Literal["cifar", "imagenet"]
SHORTCUTS: tuple[Shortcut, ...] = ("A", "B", "C", None)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding and no bias (a BN follows every conv)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero-filled channels. Parameter-free."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A cannot shrink channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.extra_channels = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's last pair pads dim 1 (channels) at its end: the input channels keep their index.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(
    shortcut: Shortcut, in_planes: int, out_planes: int, stride: int
) -> nn.Module | None:
    """The module on a block's shortcut path, or ``None`` for the plain identity.

    Named ``downsample`` in the blocks, as in torchvision, so the state-dict keys agree.
    """
    reshapes = stride != 1 or in_planes != out_planes
    if shortcut is None or (shortcut in ("A", "B") and not reshapes):
        return None
    if shortcut == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    if shortcut in ("B", "C"):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    raise ValueError(f"unknown shortcut option {shortcut!r}; expected one of {SHORTCUTS}")


class BasicBlock(nn.Module):
    """Two 3x3 convs (paper Fig. 2 left); ``residual=False`` drops the shortcut (plain nets)."""

    expansion: int = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        del stride_in_1x1  # Only meaningful for the bottleneck; accepted for a uniform signature.
        self.residual = shortcut is not None
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = make_shortcut(shortcut, in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs (paper Fig. 5 right).

    ``stride_in_1x1=True`` puts the stride in the first 1x1 conv, as the paper (and its Table 1
    multiply-add counts) does; ``False`` puts it in the 3x3 conv, torchvision's "ResNet v1.5",
    which costs about 7% more compute and gains about 0.5% top-1 (NVIDIA DeepLearningExamples).
    """

    expansion: int = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        self.residual = shortcut is not None
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A residual (or plain) network: a stem, stages of blocks, global pooling and a classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each stage.
        widths: base width of each stage (the bottleneck's output is ``expansion`` times that).
        stem: ``"cifar"`` (one 3x3 conv, paper section 4.2) or ``"imagenet"`` (7x7/2 conv and
            3x3/2 max-pool, paper Table 1).
        shortcut: ``"A"``, ``"B"``, ``"C"`` or ``None`` for a plain network.
        num_classes: size of the classifier.
        zero_init_residual: start each residual branch's last BN at zero, so every block begins
            as the identity (arXiv 1706.02677). Ignored for plain networks.
        stride_in_1x1: where a bottleneck puts its stride (see :class:`Bottleneck`).
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        widths: list[int],
        *,
        stem: Stem,
        shortcut: Shortcut,
        num_classes: int,
        zero_init_residual: bool = False,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"{len(layers)} stages of blocks but {len(widths)} widths")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut option {shortcut!r}; expected one of {SHORTCUTS}")
        self.stem = stem
        self.shortcut = shortcut
        self.in_planes = widths[0]
        if stem == "cifar":
            self.conv1 = conv3x3(3, self.in_planes)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(
                3, self.in_planes, kernel_size=7, stride=2, padding=3, bias=False
            )
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'cifar' or 'imagenet'")
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        for index, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage = self._make_layer(block, width, blocks, stride, shortcut, stride_in_1x1)
            self.add_module(f"layer{index + 1}", stage)
        self.num_stages = len(layers)
        self.num_features = widths[-1] * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)
        # Weighted layers as the paper counts them: convs on the main path plus the classifier.
        convs_per_block = 3 if block is Bottleneck else 2
        self.depth = 2 + convs_per_block * sum(layers)
        self._init_weights(zero_init_residual)

    def _make_layer(
        self,
        block: Block,
        planes: int,
        blocks: int,
        stride: int,
        shortcut: Shortcut,
        stride_in_1x1: bool,
    ) -> nn.Sequential:
        stage = []
        for index in range(blocks):
            stage.append(
                block(
                    self.in_planes,
                    planes,
                    stride if index == 0 else 1,
                    shortcut=shortcut,
                    stride_in_1x1=stride_in_1x1,
                )
            )
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015, "Delving Deep into Rectifiers" (the paper's reference [13]).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual and self.shortcut is not None:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages of blocks, in order (``layer1``, ``layer2``, ...)."""
        return [getattr(self, f"layer{index + 1}") for index in range(self.num_stages)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages: the last feature map, before pooling."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling and the classifier (skipped when ``pre_logits``)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_resnet(depth: int, shortcut: Shortcut, num_classes: int, zero_init: bool) -> ResNet:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR networks have 6n+2 layers; {depth} is not of that form")
    n = (depth - 2) // 6
    return ResNet(
        BasicBlock,
        [n, n, n],
        [16, 32, 64],
        stem="cifar",
        shortcut=shortcut,
        num_classes=num_classes,
        zero_init_residual=zero_init,
    )


def _imagenet_resnet(
    block: Block,
    layers: list[int],
    shortcut: Shortcut,
    num_classes: int,
    zero_init: bool,
    stride_in_1x1: bool = True,
) -> ResNet:
    return ResNet(
        block,
        layers,
        [64, 128, 256, 512],
        stem="imagenet",
        shortcut=shortcut,
        num_classes=num_classes,
        zero_init_residual=zero_init,
        stride_in_1x1=stride_in_1x1,
    )


def cifar_resnet(
    depth: int,
    *,
    num_classes: int = 10,
    shortcut: Shortcut = "A",
    zero_init_residual: bool = False,
) -> ResNet:
    """A CIFAR-10 network of any depth 6n+2 (paper section 4.2); ``shortcut=None`` is plain."""
    return _cifar_resnet(depth, shortcut, num_classes, zero_init_residual)


def resnet20(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-20 for CIFAR-10 (n=3, 0.27M parameters)."""
    return _cifar_resnet(20, shortcut, num_classes, zero_init_residual)


def resnet32(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-32 for CIFAR-10 (n=5, 0.46M parameters)."""
    return _cifar_resnet(32, shortcut, num_classes, zero_init_residual)


def resnet44(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-44 for CIFAR-10 (n=7, 0.66M parameters)."""
    return _cifar_resnet(44, shortcut, num_classes, zero_init_residual)


def resnet56(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-56 for CIFAR-10 (n=9, 0.85M parameters)."""
    return _cifar_resnet(56, shortcut, num_classes, zero_init_residual)


def resnet110(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-110 for CIFAR-10 (n=18, 1.7M parameters)."""
    return _cifar_resnet(110, shortcut, num_classes, zero_init_residual)


def resnet1202(
    *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-1202 for CIFAR-10 (n=200, 19.4M parameters)."""
    return _cifar_resnet(1202, shortcut, num_classes, zero_init_residual)


def plain20(*, num_classes: int = 10) -> ResNet:
    """Plain-20 for CIFAR-10: ResNet-20's layers without shortcuts."""
    return _cifar_resnet(20, None, num_classes, False)


def plain32(*, num_classes: int = 10) -> ResNet:
    """Plain-32 for CIFAR-10."""
    return _cifar_resnet(32, None, num_classes, False)


def plain44(*, num_classes: int = 10) -> ResNet:
    """Plain-44 for CIFAR-10."""
    return _cifar_resnet(44, None, num_classes, False)


def plain56(*, num_classes: int = 10) -> ResNet:
    """Plain-56 for CIFAR-10."""
    return _cifar_resnet(56, None, num_classes, False)


def plain110(*, num_classes: int = 10) -> ResNet:
    """Plain-110 for CIFAR-10."""
    return _cifar_resnet(110, None, num_classes, False)


def resnet18(
    *, num_classes: int = 1000, shortcut: Shortcut = "B", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18 for ImageNet (paper Table 1; basic blocks)."""
    return _imagenet_resnet(BasicBlock, [2, 2, 2, 2], shortcut, num_classes, zero_init_residual)


def resnet34(
    *, num_classes: int = 1000, shortcut: Shortcut = "B", zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34 for ImageNet (paper Table 1; basic blocks)."""
    return _imagenet_resnet(BasicBlock, [3, 4, 6, 3], shortcut, num_classes, zero_init_residual)


def resnet50(
    *,
    num_classes: int = 1000,
    shortcut: Shortcut = "B",
    zero_init_residual: bool = False,
    stride_in_1x1: bool = True,
) -> ResNet:
    """ResNet-50 for ImageNet (paper Table 1; bottleneck blocks, the paper's stride placement).

    Pass ``stride_in_1x1=False`` for torchvision's v1.5 (needed to reproduce its outputs).
    """
    return _imagenet_resnet(
        Bottleneck, [3, 4, 6, 3], shortcut, num_classes, zero_init_residual, stride_in_1x1
    )


def resnet101(
    *,
    num_classes: int = 1000,
    shortcut: Shortcut = "B",
    zero_init_residual: bool = False,
    stride_in_1x1: bool = True,
) -> ResNet:
    """ResNet-101 for ImageNet (paper Table 1; bottleneck blocks, the paper's stride placement)."""
    return _imagenet_resnet(
        Bottleneck, [3, 4, 23, 3], shortcut, num_classes, zero_init_residual, stride_in_1x1
    )


def resnet152(
    *,
    num_classes: int = 1000,
    shortcut: Shortcut = "B",
    zero_init_residual: bool = False,
    stride_in_1x1: bool = True,
) -> ResNet:
    """ResNet-152 for ImageNet (paper Table 1; bottleneck blocks, the paper's stride placement)."""
    return _imagenet_resnet(
        Bottleneck, [3, 8, 36, 3], shortcut, num_classes, zero_init_residual, stride_in_1x1
    )


def plain18(*, num_classes: int = 1000) -> ResNet:
    """Plain-18 for ImageNet: ResNet-18's layers without shortcuts (paper Table 2)."""
    return _imagenet_resnet(BasicBlock, [2, 2, 2, 2], None, num_classes, False)


def plain34(*, num_classes: int = 1000) -> ResNet:
    """Plain-34 for ImageNet (paper Fig. 3 middle, Table 2)."""
    return _imagenet_resnet(BasicBlock, [3, 4, 6, 3], None, num_classes, False)
