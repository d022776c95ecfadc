"""Figure 7's measurement: the standard deviation of each 3x3 layer's response.

The paper (section 4.2, Fig. 7): "The responses are the outputs of each 3x3 layer, after BN
and before other nonlinearity (ReLU/addition)". Forward hooks on the BN that follows each
3x3 conv read exactly that; a residual block adds its shortcut only after its second BN.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.artifacts
import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from torch import nn

from resnet_mlops.data.loaders.cifar_arrays import load_cifar_split, normalization
from resnet_mlops.engine.artifact import load_model, model_kwargs
from resnet_mlops.mlflow_store import global_tracking_uri
from resnet_mlops.models import ResNet, build_model
from resnet_mlops.report.runs import RunRecord
from resnet_mlops.serving.package import ARTIFACT_NAME, MODEL_FILE


def load_run_model(client: MlflowClient, run: RunRecord, tracking_uri: str) -> ResNet | None:
    """Rebuild the model a run logged to MLflow, or None when it logged none.

    Module hooks do not fire on a ``torch.export`` program, so the project's own module is
    rebuilt: from the ``model.pt`` inside the run's classifier, or, for a run logged before
    the classifier was the run's model, from the weights of its ``pytorch`` flavour model.
    """
    logged = [
        m for m in client.search_logged_models([run.experiment_id]) if m.source_run_id == run.run_id
    ]
    if not logged:
        return None
    classifier = next((m for m in logged if m.name == ARTIFACT_NAME), None)
    with global_tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        if classifier is not None:
            uri = f"{classifier.artifact_location}/artifacts/{MODEL_FILE}"  # its artifacts/
            return load_model(Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp)))[0]
        loaded = mlflow.pytorch.load_model(logged[-1].model_uri, map_location="cpu")
    state = loaded.state_dict()
    kwargs = model_kwargs(
        run.model,
        run.params.get("train.shortcut", "default"),
        run.params.get("train.zero_init_residual", "False") == "True",
        int(state["fc.weight"].shape[0]),
    )
    model = build_model(run.model, **kwargs)
    model.load_state_dict(state)
    return model.eval()


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after each 3x3 conv (``<block>.convK`` -> ``<block>.bnK``), in forward order."""
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        prefix, _, leaf = name.rpartition(".")
        if not isinstance(module, nn.BatchNorm2d) or not leaf.startswith("bn"):
            continue  # e.g. a projection shortcut's BN, downsample.1
        conv = modules.get(f"{prefix}.conv{leaf[2:]}" if prefix else f"conv{leaf[2:]}")
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            found.append((name, module))
    return found


def cifar_test_batch(data_dir: Path, count: int, normalization_mode: str) -> torch.Tensor:
    """``count`` test images spread evenly over the split (it may be sorted by class),
    normalised as the model was trained: float32 (N, 3, 32, 32).

    Raises:
        DataError: the preprocessed folder is missing or malformed.
    """
    split = load_cifar_split(data_dir, "test")
    index = np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)
    shift, scale = normalization(split, normalization_mode)  # type: ignore[arg-type]
    images = (split.images[index].astype(np.float32) - shift) * scale
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@torch.no_grad()
def response_stds(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    """The standard deviation of each 3x3 layer's response over all images, positions and
    channels, in forward order (eval mode: BN uses its running statistics)."""
    layers = response_layers(model)
    sums = np.zeros((len(layers), 3))  # count, sum, sum of squares (float64)

    def hook(index: int):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            values = output.detach().double()
            sums[index] += (values.numel(), values.sum().item(), values.square().sum().item())

        return record

    handles = [module.register_forward_hook(hook(i)) for i, (_, module) in enumerate(layers)]
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    count, total, squares = sums.T
    mean = total / np.maximum(count, 1)
    return np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0))
