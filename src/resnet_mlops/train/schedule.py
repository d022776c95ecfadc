"""The learning rate as a pure function of the iteration."""

from __future__ import annotations

import bisect

from resnet_mlops.params.train import OptimizerParams, ScheduleParams

# The paper's ResNet-110 warm-up (section 4.2): 0.01 for about 400 iterations, then 0.1.
PAPER_WARMUP_MODELS = {"resnet110", "resnet1202"}
PAPER_WARMUP_ITERATIONS = 400


def warmup_iterations(schedule: ScheduleParams, model: str, iterations_per_epoch: int) -> int:
    """The warm-up length in iterations (``auto``: the paper's rule for the model)."""
    if schedule.warmup_length == "auto":
        return PAPER_WARMUP_ITERATIONS if model in PAPER_WARMUP_MODELS else 0
    return to_iterations(schedule.warmup_length, schedule, iterations_per_epoch)


def to_iterations(length: int, schedule: ScheduleParams, iterations_per_epoch: int) -> int:
    """A length in the schedule's unit, in iterations."""
    return length * iterations_per_epoch if schedule.unit == "epochs" else length


def learning_rate(
    iteration: int,
    *,
    optimizer: OptimizerParams,
    schedule: ScheduleParams,
    warmup: int,
    iterations_per_epoch: int,
) -> float:
    """The learning rate for ``iteration`` (0-based).

    After the warm-up the rate is ``lr * gamma ** k`` with ``k`` the milestones passed; the
    warm-up does not shift the milestones. A pure function: resuming needs only the iteration.
    """
    if iteration < warmup:
        if schedule.warmup_mode == "linear":
            return optimizer.lr * (iteration + 1) / warmup
        return schedule.warmup_lr
    milestones = [to_iterations(m, schedule, iterations_per_epoch) for m in schedule.milestones]
    return optimizer.lr * schedule.gamma ** bisect.bisect_right(milestones, iteration)
