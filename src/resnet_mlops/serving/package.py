"""A trained ``model.pt`` as an MLflow pyfunc that needs no project code to load or serve.

The network is saved with ``torch.export`` (``network.pt2``): a graph of ATen operators that
``torch.export.load`` runs without the model classes, with a dynamic batch size. Pickling the
module (MLflow's ``serialization_format="pickle"``) would need ``resnet_mlops`` importable
wherever it loads; MLflow's own pt2 flavour loads the same graph but takes float tensors, so
every client would have to reimplement the preprocessing. Here the pyfunc takes encoded images
and applies the training's evaluation transform itself (see :mod:`classifier_model`).

A ``.pt2`` archive loads with the PyTorch release that wrote it (or a close one), so the model's
requirements pin it; ``model.pt`` rides along as an artifact, the weights and the full config,
for rebuilding with this project's code under another release.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import PIL
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from resnet_mlops.serving import classifier_model
from resnet_mlops.serving.classifier_model import FORMAT, INPUT_COLUMN

ARTIFACT_NAME = "classifier"  # the logged model's name
PREPROCESSING_FILE = "preprocessing.json"
NETWORK_FILE = "network.pt2"
MODEL_FILE = "model.pt"
# On the logged model and the registered version: the sha256 of the model.pt inside, so that
# `resnet register` finds the model the training logged instead of exporting it again.
MODEL_SHA256_TAG = "model.sha256"

INPUT_DESCRIPTION = (
    f"pandas DataFrame with one column {INPUT_COLUMN!r}: each row an encoded image file's bytes "
    "(JPEG, PNG; any size, RGB or grayscale) or their base64; over HTTP base64-encoded, e.g. "
    f'{{"dataframe_split": {{"columns": ["{INPUT_COLUMN}"], "data": [["<base64>"]]}}}}, '
    f'{{"inputs": {{"{INPUT_COLUMN}": ["<base64>"]}}}} or CSV with an {INPUT_COLUMN!r} column'
)
OUTPUT_DESCRIPTION = "pandas DataFrame, one float column per class: softmax probabilities"


def preprocessing_spec(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The evaluation transform a model file records, as ``classifier_model`` reads it.

    Means and standard deviations are in 0..255 units, as the training pipelines apply them.
    """
    if preprocessing["dataset"] == "cifar10":
        side = int(preprocessing["input_size"])
        mean_image = preprocessing.get("mean_image")
        geometry = {"resize_shorter": side, "crop": side}
        normalization = {
            "normalization": preprocessing["normalization"],
            "mean": [float(m) for m in preprocessing["mean"]],
            "std": [float(s) for s in preprocessing["std"]],
            "mean_image": None if mean_image is None else np.asarray(mean_image).tolist(),
        }
    else:
        geometry = {
            "resize_shorter": int(preprocessing["resize"]),
            "crop": int(preprocessing["center_crop"]),
        }
        normalization = {
            "normalization": "channel",
            "mean": [m * 255 for m in preprocessing["mean"]],
            "std": [s * 255 for s in preprocessing["std"]],
            "mean_image": None,
        }
    return {
        "format": FORMAT,
        "dataset": preprocessing["dataset"],
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "classes": list(preprocessing["classes"]),
        **geometry,
        **normalization,
    }


def export_network(model: torch.nn.Module, crop: int, path: Path) -> None:
    """Save ``model`` (CPU, eval mode) as a ``torch.export`` program with a dynamic batch size.

    The example batch holds 2 images: with 1, export would specialise the batch size to 1.
    """
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        model.cpu().float().eval(), (example,), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, path)


@dataclass(frozen=True)
class ModelFiles:
    """The artifacts of the pyfunc, written to a folder."""

    network: Path
    preprocessing: Path
    checkpoint: Path
    spec: dict[str, Any]

    @classmethod
    def read(cls, folder: Path) -> ModelFiles:
        """The files :func:`write_model_files` wrote to ``folder``."""
        spec = json.loads((folder / PREPROCESSING_FILE).read_text())
        return cls(folder / NETWORK_FILE, folder / PREPROCESSING_FILE, folder / MODEL_FILE, spec)

    def artifacts(self) -> dict[str, str]:
        """The ``artifacts`` argument of ``log_model``."""
        return {
            "network": str(self.network),
            "preprocessing": str(self.preprocessing),
            "model_file": str(self.checkpoint),
        }


def write_model_files(
    model: torch.nn.Module, meta: dict[str, Any], model_path: Path, folder: Path
) -> ModelFiles:
    """Export the network and describe its preprocessing in ``folder``, beside a copy of
    ``model_path`` (the ``model.pt`` that ``meta`` describes)."""
    spec = preprocessing_spec(meta["preprocessing"])
    export_network(model, spec["crop"], folder / NETWORK_FILE)
    (folder / PREPROCESSING_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    shutil.copyfile(model_path, folder / MODEL_FILE)
    return ModelFiles.read(folder)


def model_summary(meta: dict[str, Any], sha256: str) -> dict[str, str]:
    """What the logged model says of itself (its MLmodel metadata), away from the registry."""
    provenance = meta.get("provenance") or {}
    return {
        "dataset": str(meta["preprocessing"]["dataset"]),
        "model": str(meta["model"]),
        "data.version": str(provenance.get("data_version", "unknown")),
        "git.commit": str(provenance.get("mlflow.source.git.commit", "unknown")),
        MODEL_SHA256_TAG: sha256,
    }


def signature(classes: list[str]) -> ModelSignature:
    """Binary images in (base64 over HTTP), one double column per class out."""
    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("double", name) for name in classes]),
    )


def example_input(crop: int) -> pd.DataFrame:
    """Two gray PNGs: MLflow stores them as the serving example and checks the model on them."""
    buffer = io.BytesIO()
    Image.new("RGB", (crop, crop), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [buffer.getvalue()] * 2})


def pyfunc_arguments(files: ModelFiles, metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``Model.log`` takes for the pyfunc besides its name, run and model id.

    MLflow loads it once from the code file while logging, to check the input example.
    """
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"pillow=={PIL.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
    return {
        "flavor": mlflow.pyfunc,
        "python_model": classifier_model.__file__,
        "artifacts": files.artifacts(),
        "signature": signature(files.spec["classes"]),
        "input_example": example_input(files.spec["crop"]),
        "pip_requirements": requirements,
        "metadata": metadata,
    }
