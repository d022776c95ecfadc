"""The test data a model is compared on: its version, and scoring a registered model on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from resnet_mlops.errors import DataError
from resnet_mlops.serving.classifier_model import ImageScorer, decode_image

CHUNK = 512


def split_files(data_dir: Path, dataset: str, split: str) -> list[str]:
    """The preprocessed files that hold ``split``: arrays for CIFAR-10, shards for ImageNet.

    Raises:
        DataError: ``index.json`` is missing or does not list the split.
    """
    if dataset == "cifar10":
        return [f"{split}_images.npy", f"{split}_labels.npy"]
    path = data_dir / "index.json"
    try:
        entry = json.loads(path.read_text())["splits"][split]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the preprocess stage)") from None
    except (KeyError, TypeError, json.JSONDecodeError):
        raise DataError(f"{path}: no split {split!r}") from None
    return sorted(entry["shards"])


def split_version(data_dir: Path, dataset: str, split: str) -> str:
    """A short content hash of the test split alone, from the SHA-256s in ``manifest.json``.

    Training-only changes (a new validation split, other augmentation) keep it, so test errors
    measured before and after them stay comparable.

    Raises:
        DataError: no manifest, or it does not list one of the split's files.
    """
    path = data_dir / "manifest.json"
    try:
        outputs = json.loads(path.read_text())["outputs"]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the preprocess stage)") from None
    except (KeyError, TypeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a preprocess manifest") from None
    try:
        hashes = {name: outputs[name]["sha256"] for name in split_files(data_dir, dataset, split)}
    except KeyError as error:
        raise DataError(f"{path}: does not list {error.args[0]}") from None
    text = json.dumps({"dataset": dataset, "split": split, "files": hashes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def top1_error(scorer: ImageScorer, data_dir: Path, dataset: str, split: str) -> float:
    """The top-1 error (%) of ``scorer`` on a preprocessed split, with its own preprocessing.

    Raises:
        DataError: the split cannot be read, or an image in it cannot be decoded.
    """
    if dataset == "cifar10":
        from resnet_mlops.data.loaders.cifar_arrays import load_cifar_split

        cifar = load_cifar_split(data_dir, split)
        labels = cifar.labels
        chunks = (
            list(cifar.images[start : start + CHUNK]) for start in range(0, len(labels), CHUNK)
        )
    else:
        from resnet_mlops.data.loaders.jpeg_shards import load_imagenet_split

        shards = load_imagenet_split(data_dir, split)
        labels = shards.labels

        def decoded(index: int) -> np.ndarray:
            try:
                return decode_image(bytes(shards.jpeg(index)))
            except ValueError as error:
                raise DataError(f"{shards.describe(index)}: {error}") from None

        chunks = (
            [decoded(i) for i in range(start, min(start + CHUNK, len(labels)))]
            for start in range(0, len(labels), CHUNK)
        )
    wrong = 0
    for start, images in zip(range(0, len(labels), CHUNK), chunks, strict=False):
        predicted = scorer.probabilities(images).argmax(1)
        wrong += int((predicted != labels[start : start + len(images)]).sum())
    return 100.0 * wrong / max(len(labels), 1)
