"""The paper's model zoo: CIFAR-10 and ImageNet ResNets and their plain baselines."""

from resnet_mlops.models.catalog import MODELS, PAPER_RESULTS, PaperResult, build_model
from resnet_mlops.models.complexity import count_multiply_adds, count_parameters, input_size
from resnet_mlops.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ZeroPadShortcut,
    cifar_resnet,
)

__all__ = [
    "MODELS",
    "PAPER_RESULTS",
    "BasicBlock",
    "Bottleneck",
    "PaperResult",
    "ResNet",
    "ZeroPadShortcut",
    "build_model",
    "cifar_resnet",
    "count_multiply_adds",
    "count_parameters",
    "input_size",
]
