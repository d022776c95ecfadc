"""Bad preprocessed data: one line naming the file, from either backend, never a DALI trace."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader
from resnet_mlops.errors import DataError
from tests.support.data_fixtures import (
    cifar_images,
    imagenet_jpegs,
    write_cifar10_dir,
    write_imagenet_dir,
)

BACKENDS = ["dali", "torch"]


def one_line_error(build: Callable[[], object], *needles: str) -> str:
    """Run ``build`` (and a full pass over what it returns); the DataError it raises is one
    line that contains every needle."""
    with pytest.raises(DataError) as caught:
        for _ in build():  # type: ignore[attr-defined]
            pass
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    images, labels = cifar_images(2)
    return write_cifar10_dir(tmp_path / "cifar", {"train": (images, labels)})


def cifar_loader(data_dir: Path, backend: str = "dali", split: str = "train"):
    params = LoaderParams(backend=backend, num_threads=1)
    return lambda: build_loader(
        LoaderSpec("cifar10", split, data_dir, 8, params=params, device="cpu")
    )


def test_missing_cifar_split_names_the_file(cifar_dir: Path) -> None:
    one_line_error(cifar_loader(cifar_dir, split="val"), "val_images.npy", "no such file")


@pytest.mark.parametrize(
    ("name", "array", "needle"),
    [
        ("train_images.npy", np.zeros((20, 32, 32, 3), np.float32), "expected uint8"),
        ("train_images.npy", np.zeros((20, 32, 32), np.uint8), "(N, 32, 32, 3)"),
        ("train_labels.npy", np.zeros(19, np.int64), "expected int64 (20)"),
        ("train_labels.npy", np.zeros(20, np.int32), "got int32"),
        ("train_labels.npy", np.arange(20, dtype=np.int64), "label 10 at index 10"),
        ("mean_image.npy", np.zeros((3,), np.float32), "float32 (32, 32, 3)"),
    ],
)
def test_wrong_cifar_arrays_name_the_file(
    cifar_dir: Path, name: str, array: np.ndarray, needle: str
) -> None:
    np.save(cifar_dir / name, array)
    one_line_error(cifar_loader(cifar_dir), str(cifar_dir / name), needle)


def test_missing_or_broken_cifar_stats_name_the_file(cifar_dir: Path) -> None:
    stats = cifar_dir / "stats.json"
    stats.write_text("{")
    one_line_error(cifar_loader(cifar_dir), str(stats), "not valid JSON")
    stats.write_text(json.dumps({"classes": ["a"], "mean": [1, 2], "std": [1, 1, 1]}))
    one_line_error(cifar_loader(cifar_dir), str(stats), "3 means")
    stats.unlink()
    one_line_error(cifar_loader(cifar_dir), str(stats), "no such file")


def imagenet_loader(data_dir: Path, backend: str = "dali", train: bool = True):
    params = LoaderParams(backend=backend, num_threads=1)
    return lambda: build_loader(
        LoaderSpec("imagenet", "train", data_dir, 4, params=params, train=train, device="cpu")
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_jpeg_names_its_shard_and_key(
    tmp_path: Path, backend: str, train: bool, damage: str
) -> None:
    jpegs = imagenet_jpegs(8)
    bad = jpegs[5][1][:1000] if damage == "truncated" else b"not a JPEG at all" * 64
    root = write_imagenet_dir(tmp_path, jpegs, shard_size=3, corrupt={5: bad})
    message = one_line_error(
        imagenet_loader(root, backend, train), str(root / "train-00001.tar"), "00000005.jpg"
    )
    assert "cannot decode JPEG" in message


@pytest.mark.parametrize("label", ["1000", "-1", "cat"])
def test_a_label_out_of_range_names_its_shard_and_key(tmp_path: Path, label: str) -> None:
    root = write_imagenet_dir(tmp_path, imagenet_jpegs(4), shard_size=2, labels={3: label})
    one_line_error(imagenet_loader(root), "train-00001.tar", "00000003.cls", "not a class index")


@pytest.mark.parametrize(
    ("victim", "needle"),
    [
        ("index.json", "no such file"),
        ("train-00001.tar", "no such file"),
        ("train-00001.idx", "no such file"),
    ],
)
def test_missing_imagenet_files_are_named(tmp_path: Path, victim: str, needle: str) -> None:
    root = write_imagenet_dir(tmp_path, imagenet_jpegs(4), shard_size=2)
    (root / victim).unlink()
    one_line_error(imagenet_loader(root), str(root / victim), needle)


def test_a_malformed_index_is_named(tmp_path: Path) -> None:
    root = write_imagenet_dir(tmp_path, imagenet_jpegs(4), shard_size=2)
    idx = root / "train-00000.idx"
    idx.write_text("v1.1 2\n")
    one_line_error(imagenet_loader(root), str(idx), "not a v1.2 DALI index")
    idx.write_text("v1.2 2\njpg 512 10 a.jpg\n")
    one_line_error(imagenet_loader(root), str(idx), "line 2: expected jpg and cls")
    index = root / "index.json"
    index.write_text(json.dumps({"classes": [], "splits": {}}))
    one_line_error(imagenet_loader(root), str(index), "missing key 'train'")
