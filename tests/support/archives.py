"""Small real data sets on disk: class folders of JPEGs, tar.gz archives of folders, and the
official CIFAR-10 python format."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def write_class_folders(root: Path, jpegs: dict[str, dict[str, list[bytes]]]) -> Path:
    """Lay out ``root/<split>/<class>/NNNN.jpg``."""
    for split, classes in jpegs.items():
        for cls, images in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for index, data in enumerate(images):
                (folder / f"{index:04d}.jpg").write_bytes(data)
    return root


def tar_folder(folder: Path, archive: Path, arcname_prefix: str = "") -> Path:
    """Pack a folder's contents into a .tar.gz (paths relative to the folder)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(
                path, arcname=arcname_prefix + path.relative_to(folder).as_posix(), recursive=False
            )
    return archive


def official_cifar_archive(path: Path, per_batch: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """A small archive in the official ``cifar-10-python.tar.gz`` format (pickled batches).

    Returns the archive and the arrays it holds: {"train": (images NHWC, labels), "test": ...}.
    """
    rng = np.random.default_rng(seed)
    batches = {}
    arrays: dict[str, list] = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        arrays["test" if name == "test_batch" else "train"].append((images, labels))
    batches["batches.meta"] = {b"label_names": [c.encode() for c in "abcdefghij"]}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    merged = {
        split: (np.concatenate([i for i, _ in parts]), np.concatenate([y for _, y in parts]))
        for split, parts in arrays.items()
    }
    return path, merged
