"""The ``train`` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class OptimizerParams:
    """SGD with momentum, as in the paper (section 3.4 and 4.2)."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    label_smoothing: float  # 0 in the paper


@dataclass(frozen=True)
class ScheduleParams:
    """Step decay, counted in iterations (the paper's CIFAR recipe) or epochs (ImageNet).

    ``warmup_length`` runs at ``warmup_lr`` first (``constant``: the paper's ResNet-110
    warm-up) or ramps linearly to ``lr`` (``linear``: Goyal et al., arXiv 1706.02677).
    ``auto`` is the paper's rule: 400 iterations at 0.01 for ResNet-110 and -1202, else none.
    """

    unit: Literal["iterations", "epochs"]
    length: int
    milestones: tuple[int, ...]
    gamma: float
    warmup_length: int | Literal["auto"]
    warmup_lr: float
    warmup_mode: Literal["constant", "linear"]


@dataclass(frozen=True)
class TrainParams:
    """Everything ``resnet train`` reads besides the data set and the loader."""

    model: str
    shortcut: Literal["default", "A", "B", "C"]
    zero_init_residual: bool
    batch_size: int  # global: divided among distributed ranks
    optimizer: OptimizerParams
    schedule: ScheduleParams
    precision: Precision  # auto: bf16 on CPUs and GPUs that have it, else fp16 on GPUs
    channels_last: bool
    compile: bool
    seed: int
    deterministic: bool
    device: str  # auto | cpu | cuda | cuda:N
    checkpoint_every: int  # iterations; 0: only at the end (and on SIGTERM)
    log_every: int  # iterations between progress updates and step metrics
    experiment: str  # the MLflow experiment
    cuda_graphs: bool = False  # replay each full training batch's forward and backward
