"""``resnet predict``: top-k classes for image files, from a registered, pulled or local model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_mlops.registry.connection import RegistryError, parse_model_uri, reaching, resolve
from resnet_mlops.serving.classifier_model import INPUT_COLUMN, ImageScorer, decode_image

# Encoded images in, (probabilities (N, classes), class names) out.
Predictor = Callable[[Sequence[bytes]], tuple[np.ndarray, list[str]]]


@dataclass(frozen=True)
class Prediction:
    """One image's most likely classes, best first."""

    image: str
    top: list[tuple[str, float]]


def read_images(paths: Sequence[Path]) -> list[bytes]:
    """Read and check every image before any model is loaded.

    Raises:
        RegistryError: a file is missing, or not a decodable image (the file is named).
    """
    images = []
    for path in paths:
        try:
            data = path.read_bytes()
            decode_image(data)
        except OSError as error:
            raise RegistryError(f"{path}: {error.strerror or error}") from None
        except ValueError as error:
            raise RegistryError(f"{path}: {error}") from None
        images.append(data)
    return images


def _pyfunc_predictor(uri: str) -> Predictor:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(uri)

    def predict(images: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        frame = model.predict(pd.DataFrame({INPUT_COLUMN: list(images)}))
        return frame.to_numpy(np.float64), [str(c) for c in frame.columns]

    return predict


def _model_file_predictor(path: Path) -> Predictor:
    from resnet_mlops.engine.artifact import load_model
    from resnet_mlops.serving.package import preprocessing_spec

    network, meta = load_model(path)
    scorer = ImageScorer(network, preprocessing_spec(meta["preprocessing"]))

    def predict(images: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        return scorer.probabilities([decode_image(i) for i in images]), scorer.classes

    return predict


def load_predictor(model: str, tracking_uri: str) -> Predictor:
    """A predictor for ``models:/<name>@<alias>`` (or ``/<version>``), a pulled model folder, or
    a ``model.pt`` written by ``resnet train``.

    Raises:
        RegistryError: no such registered model, alias, version, folder or file; server down.
        CheckpointError: a corrupt ``model.pt``.
    """
    if model.startswith("models:/"):
        from mlflow import MlflowClient

        from resnet_mlops.mlflow_store import global_tracking_uri

        version = resolve(MlflowClient(tracking_uri), parse_model_uri(model), tracking_uri)
        # The pinned version, not the alias again: it might have moved since.
        with reaching(tracking_uri), global_tracking_uri(tracking_uri):
            return _pyfunc_predictor(f"models:/{version.name}/{version.version}")
    path = Path(model)
    if path.is_dir():
        if not (path / "MLmodel").exists():
            raise RegistryError(f"{path}: not an MLflow model folder (no MLmodel file)")
        return _pyfunc_predictor(str(path))
    if not path.exists():
        raise RegistryError(f"{model}: no such model file or folder, and not a models:/ URI")
    return _model_file_predictor(path)


def top_k(
    names: Sequence[str], probabilities: np.ndarray, images: Sequence[str], k: int
) -> list[Prediction]:
    """The ``k`` most likely classes of each image."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        Prediction(image, [(names[j], float(row[j])) for j in best])
        for image, row, best in zip(images, probabilities, order, strict=True)
    ]
