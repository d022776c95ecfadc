"""Tiny preprocessed data sets in the formats the input pipelines read, from the team's real
images (``../shared/datasets``): CIFAR-10 arrays and ImageNet webdataset shards.

The formats are the preprocess stage's contract (see ``resnet_mlops.data.preprocess``); these
helpers write them independently, so the pipeline tests do not depend on that stage's code.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wds2idx import IndexCreator  # DALI's own index tool, shipped with nvidia-dali

from resnet_mlops.data.cifar10 import CLASSES as CIFAR_CLASSES
from tests.support.project import CIFAR_MIRROR as CIFAR_ARCHIVE
from tests.support.project import IMAGENET_SAMPLE as IMAGENET_ARCHIVE


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here (the team's dataset mirror)")
    return path


MAX_PER_CLASS = 16


@functools.cache
def _cifar_by_class(split: str) -> dict[str, list[np.ndarray]]:
    found: dict[str, list[np.ndarray]] = {c: [] for c in CIFAR_CLASSES}
    with tarfile.open(_require(CIFAR_ARCHIVE)) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            bucket = found[parts[1]]
            if len(bucket) < MAX_PER_CLASS:
                data = archive.extractfile(member).read()
                bucket.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            if all(len(b) == MAX_PER_CLASS for b in found.values()):
                break
    return found


def cifar_images(per_class: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` (at most 16) real CIFAR-10 images of each class: uint8
    (N, 32, 32, 3) and int64 labels, class by class."""
    found = _cifar_by_class(split)
    images = np.stack([image for c in CIFAR_CLASSES for image in found[c][:per_class]])
    labels = np.repeat(np.arange(len(CIFAR_CLASSES), dtype=np.int64), per_class)
    return images, labels


def write_cifar10_dir(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...] = CIFAR_CLASSES,
) -> Path:
    """Write a preprocessed CIFAR-10 folder; statistics come from the ``train`` split."""
    root.mkdir(parents=True, exist_ok=True)
    train = splits["train"][0].astype(np.float64)
    for split, (images, labels) in splits.items():
        np.save(root / f"{split}_images.npy", images)
        np.save(root / f"{split}_labels.npy", labels)
    np.save(root / "mean_image.npy", train.mean(axis=0).astype(np.float32))
    stats = {
        "classes": list(classes),
        "mean": train.mean(axis=(0, 1, 2)).tolist(),
        "std": train.std(axis=(0, 1, 2)).tolist(),
        "splits": {split: len(labels) for split, (_, labels) in splits.items()},
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return root


@functools.cache
def imagenet_jpegs(count: int, grayscale: int = 2) -> tuple[tuple[str, bytes], ...]:
    """``(wnid, JPEG bytes)`` for ``count`` real sample images, ``grayscale`` of them gray,
    in wnid order."""
    colour: list[tuple[str, bytes]] = []
    gray: list[tuple[str, bytes]] = []
    with tarfile.open(_require(IMAGENET_ARCHIVE)) as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".JPEG"):
                continue
            data = archive.extractfile(member).read()
            is_gray = Image.open(io.BytesIO(data)).mode == "L"
            bucket, wanted = (gray, grayscale) if is_gray else (colour, count - grayscale)
            if len(bucket) < wanted:
                bucket.append((member.name.split("/")[-2], data))
            if len(colour) == count - grayscale and len(gray) == grayscale:
                break
    return tuple(sorted(colour + gray))


def write_shard(tar_path: Path, samples: list[tuple[str, bytes, str]]) -> None:
    """One webdataset shard of ``key.jpg`` + ``key.cls`` members, and its DALI index."""
    with tarfile.open(tar_path, "w") as tar:
        for key, jpeg, label in samples:
            for name, payload in ((f"{key}.jpg", jpeg), (f"{key}.cls", label.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    with IndexCreator(str(tar_path), str(tar_path.with_suffix(".idx")), verbose=False) as index:
        index.create_index()


def write_imagenet_dir(
    root: Path,
    jpegs: tuple[tuple[str, bytes], ...],
    *,
    shard_size: int,
    corrupt: dict[int, bytes] | None = None,
    labels: dict[int, str] | None = None,
) -> Path:
    """Write a preprocessed ImageNet folder whose ``train`` split holds ``jpegs`` (one class per
    wnid) and whose ``val`` split lists the same shards, as for a single-folder source.

    ``corrupt`` replaces some samples' JPEG bytes and ``labels`` their ``.cls`` text.
    """
    root.mkdir(parents=True, exist_ok=True)
    classes = sorted({wnid for wnid, _ in jpegs})
    samples = [
        (
            f"{i:08d}",
            (corrupt or {}).get(i, data),
            (labels or {}).get(i, str(classes.index(wnid))),
        )
        for i, (wnid, data) in enumerate(jpegs)
    ]
    shards, indexes = [], []
    for number, start in enumerate(range(0, len(samples), shard_size)):
        name = f"train-{number:05d}"
        write_shard(root / f"{name}.tar", samples[start : start + shard_size])
        shards.append(f"{name}.tar")
        indexes.append(f"{name}.idx")
    entry = {"shards": shards, "indexes": indexes, "samples": len(samples)}
    index = {
        "classes": classes,
        "names": classes,
        "splits": {"train": entry, "val": {**entry, "alias_of": "train"}},
    }
    (root / "index.json").write_text(json.dumps(index))
    return root
