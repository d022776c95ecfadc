"""The trained model as a self-describing file: weights, config, metrics and provenance."""

from __future__ import annotations

from copy import deepcopy as copy_module
from pathlib import Path
from typing import Any

import torch

from resnet_mlops.engine.checkpoint import CheckpointError, save_checkpoint
from resnet_mlops.models import ResNet, build_model, count_parameters

FORMAT = "resnet-mlops/model/1"


def model_kwargs(name: str, shortcut: str, zero_init_residual: bool, num_classes: int) -> dict:
    """Builder arguments for a model name and the ``train`` params (plain nets take fewer)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if not name.startswith("plain"):
        kwargs["zero_init_residual"] = zero_init_residual
        if shortcut != "default":
            kwargs["shortcut"] = shortcut
    return kwargs


def save_model(
    path: Path,
    model: ResNet,
    *,
    name: str,
    kwargs: dict[str, Any],
    preprocessing: dict[str, Any],
    provenance: dict[str, Any],
    metrics: dict[str, float],
    config: dict[str, Any],
) -> None:
    """Write ``model.pt``: everything a user needs to rebuild, run and trace the model."""
    save_checkpoint(
        path,
        {
            "kind": FORMAT,
            "model": name,
            "model_kwargs": kwargs,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "parameters": count_parameters(model),
            "preprocessing": preprocessing,
            "provenance": provenance,
            "metrics": metrics,
            "config": config,
        },
    )


def load_model(path: Path) -> tuple[ResNet, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`; returns it (eval mode) and its metadata.

    Raises:
        CheckpointError: missing, corrupt, or not a model file.
    """
    from resnet_mlops.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if state.get("kind") != FORMAT:
        raise CheckpointError(f"{path}: a training checkpoint, not a model file")
    model = build_model(state["model"], **state["model_kwargs"])
    model.load_state_dict(state["state_dict"])
    return model.eval(), {k: v for k, v in state.items() if k != "state_dict"}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside (Distributed)DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a model, unwrapped from DDP and ``torch.compile``."""
    return unwrap(model).state_dict()


def portable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy in eval mode with contiguous weights: what an exported or logged model holds.

    CPU training keeps the weights channels_last; torch.export's weight packaging then finds
    no complete tensor for any conv weight and warns "No complete tensor found in the group!"
    once per weight (torch 2.11-2.14, torch/export/pt2_archive/_package_weights.py).
    """
    copy = copy_module(unwrap(model)).cpu().eval()
    return copy.to(memory_format=torch.contiguous_format)
