"""The preprocessed CIFAR-10 arrays, read once and checked before any pipeline sees them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_mlops.errors import DataError
from resnet_mlops.io import read_json
from resnet_mlops.params.loader import CifarNormalization

SIDE = 32


@dataclass(frozen=True)
class CifarSplit:
    """One split in memory: images (N, 32, 32, 3) uint8 RGB, labels (N,) int64, and the
    training split's statistics in 0..255 units."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    mean_image: np.ndarray
    channel_mean: np.ndarray
    channel_std: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _load(path: Path, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the preprocess stage)") from None
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a NumPy array file ({error})") from None
    fits = array.ndim == len(shape) and all(
        want is None or have == want for have, want in zip(array.shape, shape, strict=True)
    )
    if array.dtype != dtype or not fits:
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise DataError(
            f"{path}: expected {np.dtype(dtype)} {wanted}, got {array.dtype} {array.shape}"
        )
    return array


def _read_stats(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    stats = read_json(path, "run the preprocess stage")
    try:
        classes = tuple(str(c) for c in stats["classes"])
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: expected classes, mean and std ({error})") from None
    if not classes or mean.shape != (3,) or std.shape != (3,) or not np.all(std > 0):
        raise DataError(f"{path}: expected classes, 3 means and 3 positive stds")
    return classes, mean, std


def load_cifar_split(data_dir: Path, split: str) -> CifarSplit:
    """Read and check ``{split}_images.npy``, ``{split}_labels.npy``, ``mean_image.npy`` and
    ``stats.json`` from a preprocessed CIFAR-10 folder.

    Raises:
        DataError: a file is missing, of the wrong dtype or shape, or a label is out of range.
    """
    data_dir = Path(data_dir)
    classes, mean, std = _read_stats(data_dir / "stats.json")
    images = _load(data_dir / f"{split}_images.npy", np.uint8, (None, SIDE, SIDE, 3))
    labels_path = data_dir / f"{split}_labels.npy"
    labels = _load(labels_path, np.int64, (len(images),))
    mean_image = _load(data_dir / "mean_image.npy", np.float32, (SIDE, SIDE, 3))
    if not len(images):
        # Nothing to train or score on: an epoch of 0 batches divides by zero further on.
        raise DataError(f"{data_dir / f'{split}_images.npy'}: no images (an empty {split} split)")
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if bad.size:
        raise DataError(
            f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is out of range "
            f"[0, {len(classes)})"
        )
    return CifarSplit(images, labels, classes, mean_image, mean, std)


def evaluation_split(data_dir: Path) -> str:
    """The split training scores itself on each epoch: ``val`` when the preprocess stage held
    one out (``stats.json`` lists it), ``test`` when it did not (``val_size: 0``).

    Raises:
        DataError: ``stats.json`` lists a validation split whose arrays are missing; falling
            back to the test set would report test error as validation error, unannounced.
    """
    data_dir = Path(data_dir)
    stats_path = data_dir / "stats.json"
    stats = read_json(stats_path, "run the preprocess stage")
    splits = stats.get("splits") if isinstance(stats, dict) else None
    if not isinstance(splits, dict):  # no split list to go by: the arrays decide
        return "val" if (data_dir / "val_labels.npy").exists() else "test"
    if not splits.get("val"):
        return "test"
    for name in ("val_images.npy", "val_labels.npy"):
        if not (data_dir / name).exists():
            raise DataError(
                f"{data_dir / name}: no such file, but {stats_path} lists a validation split "
                f"of {splits['val']} images (run the preprocess stage again)"
            )
    return "val"


def normalization(split: CifarSplit, mode: CifarNormalization) -> tuple[np.ndarray, np.ndarray]:
    """``(shift, scale)``, both float32 (32, 32, 3): the network input is ``(x - shift) * scale``.

    Full-size arrays rather than broadcasts, so that DALI and torch compute the very same
    float32 expression, element by element.
    """
    if mode == "pixel":
        shift = split.mean_image
    elif mode == "channel":
        shift = np.broadcast_to(split.channel_mean, (SIDE, SIDE, 3))
    else:
        raise ValueError(f"unknown CIFAR normalization {mode!r}")
    scale = np.broadcast_to(np.float32(1.0) / split.channel_std, (SIDE, SIDE, 3))
    return np.ascontiguousarray(shift, np.float32), np.ascontiguousarray(scale, np.float32)
