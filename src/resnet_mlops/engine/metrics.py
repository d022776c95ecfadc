"""Classification metrics: top-1/top-5 error, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resnet_mlops.engine.runtime import Runtime, all_reduce_sum, autocast


@dataclass(frozen=True)
class EvalResult:
    """What one pass over an evaluation split measured (summed over all ranks)."""

    samples: int
    loss: float
    top1_error: float
    top5_error: float
    confusion: torch.Tensor  # (classes, classes): rows are true labels, columns predictions

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1).double()
        return (self.confusion.diagonal().double() / totals).tolist()

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics (percentages for errors), e.g. ``test_top1_error``."""
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_top1_error": percent(self.top1_error),
            f"{prefix}_top5_error": percent(self.top5_error),
        }


def percent(fraction: float) -> float:
    """``fraction`` in percent without float noise: 12.26, not 12.260000000000005 (an error is
    a count over at most millions of images, so ten decimals keep every real digit)."""
    return round(100 * fraction, 10)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: object,
    *,
    num_classes: int,
    runtime: Runtime,
    dtype: torch.dtype | None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalResult:
    """Run ``model`` (eval mode) over ``(images, labels)`` batches.

    Images of shape ``(B, K, 3, H, W)`` are K crops of each image (the paper's 10-crop test):
    their softmax outputs are averaged, as in the paper.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    top1 = torch.zeros((), dtype=torch.int64, device=runtime.device)
    top5 = torch.zeros((), dtype=torch.int64, device=runtime.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=runtime.device)
    seen = 0
    for images, labels in batches:  # type: ignore[attr-defined]
        images = images.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        crops = images.shape[1] if images.dim() == 5 else 1
        if crops > 1:
            images = images.flatten(0, 1)
        images = images.contiguous(memory_format=memory_format)
        with autocast(runtime.device, dtype):
            logits = model(images)
        probs = F.softmax(logits.float(), dim=1)
        if crops > 1:
            probs = probs.view(-1, crops, num_classes).mean(dim=1)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").double()
        best = probs.topk(min(5, num_classes), dim=1).indices
        top1 += (best[:, 0] == labels).sum()
        top5 += (best == labels[:, None]).any(dim=1).sum()
        confusion += torch.bincount(
            labels * num_classes + best[:, 0], minlength=num_classes * num_classes
        )
        seen += len(labels)
    model.train(was_training)
    totals = all_reduce_sum(
        torch.stack(
            [
                loss_sum,
                top1.double(),
                top5.double(),
                torch.tensor(seen, dtype=torch.float64, device=runtime.device),
            ]
        ),
        runtime,
    )
    confusion = all_reduce_sum(confusion, runtime).view(num_classes, num_classes).cpu()
    samples = int(totals[3].item())
    if samples == 0:
        raise ValueError("the evaluation split yielded no samples")
    return EvalResult(
        samples=samples,
        loss=totals[0].item() / samples,
        top1_error=1 - totals[1].item() / samples,
        top5_error=1 - totals[2].item() / samples,
        confusion=confusion,
    )
