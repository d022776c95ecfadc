"""The ``train`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from resnet_mlops.params.base import IntTuple, Section, matching

# The networks models.catalog builds: CIFAR-10 6n+2 ResNets and plain nets, then ImageNet.
MODEL_NAMES: tuple[str, ...] = (
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet1202",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "plain18",
    "plain34",
)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
# auto | cpu | cuda | cuda:N; whether a GPU is there is checked when the stage starts.
Device = Annotated[str, matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]


class OptimizerParams(Section):
    """SGD with momentum, as in the paper (section 3.4 and 4.2)."""

    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    nesterov: bool
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]  # 0 in the paper

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0:
            raise ValueError("needs momentum > 0 (torch.optim.SGD refuses it otherwise)")
        return nesterov


class ScheduleParams(Section):
    """Step decay, counted in iterations (the paper's CIFAR recipe) or epochs (ImageNet).

    ``warmup_length`` runs at ``warmup_lr`` first (``constant``: the paper's ResNet-110
    warm-up) or ramps linearly to ``lr`` (``linear``: Goyal et al., arXiv 1706.02677).
    ``auto`` is the paper's rule: 400 iterations at 0.01 for ResNet-110 and -1202, else none.
    Milestones and ``warmup_length`` are counted in ``unit``, like ``length``.
    """

    unit: Literal["iterations", "epochs"]
    length: Annotated[int, Field(ge=1)]
    milestones: IntTuple
    gamma: Annotated[float, Field(gt=0, le=1)]
    warmup_length: Annotated[int, Field(ge=0)] | Literal["auto"]
    warmup_lr: Annotated[float, Field(gt=0)]
    warmup_mode: Literal["constant", "linear"]

    @field_validator("milestones")
    @classmethod
    def _milestones_inside_the_run(
        cls, milestones: tuple[int, ...], info: ValidationInfo
    ) -> tuple[int, ...]:
        # [3, 1] would drop the rate twice at once, [-5, 2] or [2, 400] with length 300 drop
        # it never or before the first step: each is a typo, not a schedule.
        if any(m < 1 for m in milestones):
            raise ValueError(f"must be positive, got {list(milestones)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
            raise ValueError(f"must be strictly increasing, got {list(milestones)}")
        length = info.data.get("length")
        if length is not None and milestones and milestones[-1] >= length:
            raise ValueError(f"must be below length ({length}), got {list(milestones)}")
        return milestones

    @field_validator("warmup_length")
    @classmethod
    def _warmup_inside_the_run(cls, warmup: int | str, info: ValidationInfo) -> int | str:
        length = info.data.get("length")
        if isinstance(warmup, int) and length is not None and warmup >= length:
            raise ValueError(f"must be below length ({length}), got {warmup}")
        return warmup


class TrainParams(Section):
    """Everything ``resnet train`` reads besides the data set and the loader."""

    model: Annotated[str, Field(min_length=1)]  # a name of the zoo: checked at load time
    shortcut: Literal["default", "A", "B", "C"]
    zero_init_residual: bool
    batch_size: Annotated[int, Field(ge=1)]  # global: divided among distributed ranks
    optimizer: OptimizerParams
    schedule: ScheduleParams
    precision: Precision  # auto: bf16 on CPUs and GPUs that have it, else fp16 on GPUs
    channels_last: bool
    compile: bool
    seed: Annotated[int, Field(ge=0)]  # NumPy's generators take no negative seed
    deterministic: bool
    device: Device
    checkpoint_every: Annotated[int, Field(ge=0)]  # iterations; 0: only at the end and SIGTERM
    log_every: Annotated[int, Field(ge=0)]  # iterations between progress updates, step metrics
    experiment: Annotated[str, Field(min_length=1)]  # the MLflow experiment
    cuda_graphs: bool = False  # replay each full training batch's forward and backward
