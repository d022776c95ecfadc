"""What the paper reports, to print beside our numbers (He et al., arXiv 1512.03385)."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_mlops.models import PAPER_RESULTS


@dataclass(frozen=True)
class CifarRow:
    """One row of the paper's Table 6 (CIFAR-10 test error, percent)."""

    layers: int
    params_m: float  # millions, as printed in the table
    error: float  # ResNet-110: the best of 5 runs
    mean_std: tuple[float, float] | None = None  # ResNet-110: mean and std over 5 runs


# Table 6. Plain nets appear only in Figure 6, without numbers.
TABLE6: dict[str, CifarRow] = {
    "resnet20": CifarRow(20, 0.27, PAPER_RESULTS["resnet20"].top1_error),
    "resnet32": CifarRow(32, 0.46, PAPER_RESULTS["resnet32"].top1_error),
    "resnet44": CifarRow(44, 0.66, PAPER_RESULTS["resnet44"].top1_error),
    "resnet56": CifarRow(56, 0.85, PAPER_RESULTS["resnet56"].top1_error),
    "resnet110": CifarRow(110, 1.7, PAPER_RESULTS["resnet110"].top1_error, (6.61, 0.16)),
    "resnet1202": CifarRow(1202, 19.4, PAPER_RESULTS["resnet1202"].top1_error),
}

# ImageNet validation, 10-crop: top-1 (and top-5 where the paper prints it) and the table.
# Table 2 gives top-1 only; Table 3 both (ResNet-34 with option B, our builder's default).
IMAGENET_10CROP: dict[str, tuple[float, float | None, str]] = {
    "plain18": (PAPER_RESULTS["plain18"].top1_error, None, "Table 2"),
    "plain34": (PAPER_RESULTS["plain34"].top1_error, 10.02, "Table 3"),
    "resnet18": (PAPER_RESULTS["resnet18"].top1_error, None, "Table 2"),
    "resnet34": (PAPER_RESULTS["resnet34"].top1_error, 7.46, "Table 3"),
    "resnet50": (PAPER_RESULTS["resnet50"].top1_error, 6.71, "Table 3"),
    "resnet101": (PAPER_RESULTS["resnet101"].top1_error, 6.05, "Table 3"),
    "resnet152": (PAPER_RESULTS["resnet152"].top1_error, 5.71, "Table 3"),
}
