"""Names to builders, and what the paper reports for each network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resnet_mlops.models import resnet
from resnet_mlops.models.resnet import ResNet
from resnet_mlops.params.train import MODEL_NAMES

# The names are the params layer's (train.model is checked against them without torch).
MODELS: dict[str, Callable[..., ResNet]] = {name: getattr(resnet, name) for name in MODEL_NAMES}


@dataclass(frozen=True)
class PaperResult:
    """A top-1 error (percent) the paper reports for a network, and where."""

    top1_error: float
    source: str


# CIFAR-10: Table 6 (test error; ResNet-110 is the best of 5 runs, mean 6.61 +- 0.16).
# ImageNet: 10-crop top-1 validation error, Table 2 (18/34 layers, option A) and Table 3
# (option B for ResNet-34, as our builder's default; 50/101/152).
PAPER_RESULTS: dict[str, PaperResult] = {
    "resnet20": PaperResult(8.75, "Table 6"),
    "resnet32": PaperResult(7.51, "Table 6"),
    "resnet44": PaperResult(7.17, "Table 6"),
    "resnet56": PaperResult(6.97, "Table 6"),
    "resnet110": PaperResult(6.43, "Table 6"),
    "resnet1202": PaperResult(7.93, "Table 6"),
    "plain18": PaperResult(27.94, "Table 2"),
    "plain34": PaperResult(28.54, "Table 2"),
    "resnet18": PaperResult(27.88, "Table 2"),
    "resnet34": PaperResult(24.52, "Table 3"),
    "resnet50": PaperResult(22.85, "Table 3"),
    "resnet101": PaperResult(21.75, "Table 3"),
    "resnet152": PaperResult(21.43, "Table 3"),
}


def build_model(name: str, **kwargs: object) -> ResNet:
    """Build a registered model by name.

    Raises:
        KeyError: the name is not in :data:`MODELS`; the message lists the known names.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return builder(**kwargs)
