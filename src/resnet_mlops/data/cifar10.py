"""CIFAR-10: the official pickled batches or class folders in, uint8 arrays out."""

from __future__ import annotations

import io
import pickle
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnet_mlops.data.images import DEFAULT_MAX_PIXELS, BadImage, decode_rgb
from resnet_mlops.data.parallel import ReadAhead, ordered_map
from resnet_mlops.data.sources import Problem
from resnet_mlops.errors import DataError

# The official label order, which is also alphabetical.
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "test")
OFFICIAL_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
SIDE = 32


@dataclass
class RawSplit:
    """One split: images (N, 32, 32, 3) uint8 RGB, labels (N,) int64, and where each came from."""

    images: np.ndarray
    labels: np.ndarray
    files: list[str]


@dataclass
class RawDataset:
    """A whole source, read and decoded."""

    splits: dict[str, RawSplit]
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles the official batches (dicts of bytes, lists and NumPy arrays), nothing else.

    A plain ``pickle.load`` would run whatever code an archive carries.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 spells bytes when Python 3 writes it
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def is_official_archive(names: list[str]) -> bool:
    """Whether archive member names are the official ``cifar-10-batches-py`` layout."""
    return any(posixpath.basename(n) == "data_batch_1" for n in names)


def read_official(files: dict[str, bytes], origin: str) -> RawDataset:
    """Read the official pickled batches (``data`` is N x 3072, channel-planar)."""
    by_name = {posixpath.basename(name): (name, data) for name, data in files.items()}
    splits = {}
    for split, batches in OFFICIAL_BATCHES.items():
        images, labels, names = [], [], []
        for batch in batches:
            if batch not in by_name:
                raise DataError(f"{origin}: official archive is missing {batch}")
            member, data = by_name[batch]
            try:
                content = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
                pixels = np.asarray(content[b"data"], dtype=np.uint8)
                batch_labels = np.asarray(content[b"labels"], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{origin}:{member}: not a CIFAR-10 batch ({error})") from None
            if pixels.ndim != 2 or pixels.shape[1] != 3 * SIDE * SIDE:
                raise DataError(f"{origin}:{member}: expected N x 3072 pixels, got {pixels.shape}")
            if len(batch_labels) != len(pixels):
                raise DataError(
                    f"{origin}:{member}: {len(pixels)} images, {len(batch_labels)} labels"
                )
            if len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < 10:
                raise DataError(f"{origin}:{member}: labels outside 0..9")
            images.append(pixels.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
            labels.append(batch_labels)
            names.extend(f"{member}[{i}]" for i in range(len(pixels)))
        splits[split] = RawSplit(
            np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names
        )
    return RawDataset(splits)


def _split_and_class(name: str) -> tuple[str, str, str] | None:
    """``[root/]train/cat/0001.jpg`` -> ``("train", "cat", "0001.jpg")``; None if not that form."""
    parts = name.split("/")
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], parts[-1]


@dataclass(frozen=True)
class _DecodeCifar:
    """Decode one image (a picklable callable, for the worker processes)."""

    max_pixels: int

    def __call__(self, item: tuple[str, bytes]) -> np.ndarray | str:
        _, data = item
        try:
            # The size comes from the header: a 30000x30000 PNG is refused undecoded.
            return decode_rgb(data, self.max_pixels, size=(SIDE, SIDE))
        except BadImage as error:
            return str(error)


def read_class_folders(
    entries: list[tuple[str, bytes | None]],
    origin: str,
    *,
    skip_corrupt: bool,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> RawDataset:
    """Read ``train/<class>/*`` and ``test/<class>/*`` image files (in sorted order).

    ``entries`` holds files as ``(name, bytes)`` and folders as ``(name, None)``; empty class
    folders show up through the latter. Images over ``max_pixels`` are refused (or skipped)
    from their header, before decoding.
    """
    dataset = RawDataset({})
    folders: dict[str, set[str]] = {split: set() for split in SPLITS}
    files = []
    for name, data in entries:
        if data is None:
            parts = name.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] in SPLITS and not parts[-1].startswith("."):
                folders[parts[-2]].add(parts[-1])
            continue
        parsed = _split_and_class(name)
        if parsed is None:
            dataset.ignored.append(name)
            continue
        folders[parsed[0]].add(parsed[1])
        files.append((name, data, *parsed))
    for split in SPLITS:
        if not folders[split]:
            raise DataError(f"{origin}: no {split}/<class>/ folders found")
    if folders["train"] != folders["test"]:
        for a, b in (("train", "test"), ("test", "train")):
            missing = sorted(folders[a] - folders[b])
            if missing:
                raise DataError(f"{origin}: class '{missing[0]}' is in {a} but not in {b}")
    if folders["train"] != set(CLASSES):
        raise DataError(
            f"{origin}: expected the CIFAR-10 classes {', '.join(CLASSES)}; "
            f"found {', '.join(sorted(folders['train']))}"
        )
    label_of = {name: index for index, name in enumerate(CLASSES)}
    files.sort(key=lambda f: (f[2], label_of[f[3]], f[4]))
    decoded = ordered_map(
        _DecodeCifar(max_pixels),
        ((f[0], f[1]) for f in files),
        workers=workers,
        description="decode CIFAR-10",
        total=len(files),
        read_ahead=ReadAhead(chunksize=512),
    )
    kept: dict[str, list[tuple[np.ndarray, int, str]]] = {split: [] for split in SPLITS}
    for (name, _, split, cls, _), result in zip(files, decoded, strict=True):
        if isinstance(result, str):
            if not skip_corrupt:
                raise DataError(f"{origin}:{name}: {result}")
            dataset.problems.append(Problem(f"{origin}:{name}", result))
            continue
        kept[split].append((result, label_of[cls], name))
    for split in SPLITS:
        counts = Counter(label for _, label, _ in kept[split])
        for cls in CLASSES:
            if counts[label_of[cls]] == 0:
                raise DataError(f"{origin}:{split}/{cls}: class folder has no images")
        dataset.splits[split] = RawSplit(
            np.stack([image for image, _, _ in kept[split]]),
            np.array([label for _, label, _ in kept[split]], dtype=np.int64),
            [name for _, _, name in kept[split]],
        )
    return dataset


def stratified_split(
    labels: np.ndarray, val_size: int, seed: int, what: str = "val_size"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/val indices: each class gives an equal share of ``val_size``.

    ``what`` names the size in the error, e.g. ``"data/prepared/cifar10: train_size"``.

    Returns:
        (train indices, val indices), each sorted, so the arrays keep the source order.

    Raises:
        DataError: a class has fewer images than its share.
    """
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    base, extra = divmod(val_size, len(classes))
    val = []
    for rank, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        take = base + (1 if rank < extra else 0)
        if take > len(members):
            raise DataError(
                f"{what} {val_size} asks for {take} images of class {cls}, which has {len(members)}"
            )
        val.append(rng.permutation(members)[:take])
    val_indices = np.sort(np.concatenate(val))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_indices] = False
    return np.flatnonzero(train_mask), val_indices


def image_statistics(images: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-pixel mean image (float32, 0..255) and per-channel mean and std of ``(N, H, W, 3)``."""
    pixels = images.astype(np.float64)
    mean_image = pixels.mean(axis=0).astype(np.float32)
    channel_mean = pixels.mean(axis=(0, 1, 2))
    channel_std = pixels.std(axis=(0, 1, 2))
    return mean_image, channel_mean.tolist(), channel_std.tolist()
