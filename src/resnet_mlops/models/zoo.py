"""The model zoo as rows of facts: what ``resnet models`` prints."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resnet_mlops.models.catalog import MODELS, PAPER_RESULTS
from resnet_mlops.models.complexity import count_multiply_adds, count_parameters, input_size

DATASETS: dict[str, str] = {"cifar": "cifar10", "imagenet": "imagenet"}


@dataclass(frozen=True)
class ZooEntry:
    """One registered model, measured at its native input size."""

    name: str
    dataset: str
    layers: int
    shortcut: str
    parameters: int
    multiply_adds: int
    input_size: int
    paper_top1_error: float | None
    paper_source: str | None


def describe_zoo(names: list[str] | None = None) -> list[ZooEntry]:
    """Build each model on the meta device (no memory, no compute) and measure it."""
    entries = []
    for name in names or list(MODELS):
        with torch.device("meta"):
            model = MODELS[name]()
        size = input_size(model)
        paper = PAPER_RESULTS.get(name)
        entries.append(
            ZooEntry(
                name=name,
                dataset=DATASETS[model.stem],
                layers=model.depth,
                shortcut="none" if model.shortcut is None else model.shortcut,
                parameters=count_parameters(model),
                multiply_adds=count_multiply_adds(model, size),
                input_size=size,
                paper_top1_error=paper.top1_error if paper else None,
                paper_source=paper.source if paper else None,
            )
        )
    return entries
