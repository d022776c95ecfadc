"""A ``model.pt`` as ``resnet train`` writes it, without training, and a check of the logged
classifier that holds it."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from PIL import Image

from resnet_mlops.engine.artifact import load_model, model_kwargs, save_model
from resnet_mlops.mlflow_store import global_tracking_uri
from resnet_mlops.models import build_model
from resnet_mlops.serving.classifier_model import ImageScorer
from resnet_mlops.serving.package import ARTIFACT_NAME, preprocessing_spec

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_model_file(path: Path, seed: int = 0) -> Path:
    """An untrained ResNet-20 for CIFAR-10 (per-channel normalisation) saved as ``path``."""
    torch.manual_seed(seed)
    kwargs = model_kwargs("resnet20", "default", False, len(CLASSES))
    preprocessing = {
        "dataset": "cifar10",
        "input_size": 32,
        "normalization": "channel",
        "mean": [125.3, 123.0, 113.9],
        "std": [63.0, 62.1, 66.7],
        "mean_image": None,
        "classes": CLASSES,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(
        path,
        build_model("resnet20", **kwargs),
        name="resnet20",
        kwargs=kwargs,
        preprocessing=preprocessing,
        provenance={"data_version": "md5:feed"},
        metrics={},
        config={"dataset": "cifar10"},
    )
    return path


def run_classifiers(client: MlflowClient, run_id: str) -> list:
    """The logged models whose source is ``run_id``."""
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_logged_models([experiment], f"source_run_id = '{run_id}'")


def assert_logged_classifier(tracking_uri: str, run_id: str, model_file: Path) -> str:
    """The run logged one model, the classifier, and it scores images as ``model_file``'s
    network does (on 3 images: the batch size is dynamic); returns its ``models:/`` URI."""
    (logged,) = run_classifiers(MlflowClient(tracking_uri), run_id)
    assert logged.name == ARTIFACT_NAME
    with global_tracking_uri(tracking_uri):  # models:/ URIs resolve through it
        loaded = mlflow.pyfunc.load_model(logged.model_uri)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(3)]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    served = loaded.predict(pd.DataFrame({"image": encoded})).to_numpy()
    model, meta = load_model(model_file)
    with torch.no_grad():
        scorer = ImageScorer(model, preprocessing_spec(meta["preprocessing"]))
        expected = scorer.probabilities(images)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    return logged.model_uri
