"""The preprocessed ImageNet shards: where each sample's JPEG lies, and its label.

The DALI index files (wds2idx v1.2) give every member's byte offset and size, so a sample is
one positioned read from its tar shard. Labels (the ``.cls`` members) are read and checked once,
up front: a bad label is reported before training starts, not mid-epoch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_mlops.errors import DataError
from resnet_mlops.io import read_json

INDEX_VERSION = "v1.2"
MAX_OPEN_SHARDS = 64


def _read_index_json(data_dir: Path, split: str) -> tuple[tuple[str, ...], list[str], list[str]]:
    path = data_dir / "index.json"
    index = read_json(path, "run the preprocess stage")
    try:
        classes = tuple(str(c) for c in index["classes"])
        entry = index["splits"][split]
        shards, indexes = list(entry["shards"]), list(entry["indexes"])
    except KeyError as error:
        raise DataError(f"{path}: missing key {error} (split {split!r})") from None
    except TypeError as error:
        raise DataError(f"{path}: malformed ({error})") from None
    if len(shards) != len(indexes) or not shards:
        raise DataError(f"{path}: split {split!r} needs as many index files as shards (>0)")
    return classes, shards, indexes


def _parse_index(idx_path: Path, tar_size: int) -> list[tuple[str, int, int, int, int]]:
    """``(key, jpg offset, jpg size, cls offset, cls size)`` for each sample of one shard."""
    try:
        lines = idx_path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{idx_path}: no such file (run the preprocess stage)") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise DataError(f"{idx_path}: not a {INDEX_VERSION} DALI index (header {header})")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        members = {}
        for ext, offset, size, name in zip(*[iter(tokens)] * 4, strict=False):
            members[ext] = (int(offset), int(size), name)
        if len(tokens) % 4 or "jpg" not in members or "cls" not in members:
            raise DataError(f"{idx_path}: line {number}: expected jpg and cls members")
        for offset, size, name in members.values():
            if offset < 0 or size < 0 or offset + size > tar_size:
                raise DataError(f"{idx_path}: line {number}: {name} lies outside the shard")
        key = members["jpg"][2].rsplit(".", 1)[0]
        samples.append((key, *members["jpg"][:2], *members["cls"][:2]))
    if len(samples) != int(header[1]):
        raise DataError(f"{idx_path}: header says {header[1]} samples, found {len(samples)}")
    return samples


class ShardFiles:
    """Positioned reads from tar shards through a small cache of open files.

    File descriptors do not survive ``fork`` safely, so the cache belongs to one process and
    starts empty in every DataLoader worker.
    """

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.paths = paths
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def read(self, shard: int, offset: int, size: int) -> bytearray:
        """``size`` bytes at ``offset`` of shard ``shard``, in a writable buffer."""
        if self._pid != os.getpid():
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.pop(shard, None)
        if fd is None:
            fd = os.open(self.paths[shard], os.O_RDONLY)
            while len(self._fds) >= MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[shard] = fd
        buffer = bytearray(size)
        if os.preadv(fd, [buffer], offset) != size:
            raise DataError(f"{self.paths[shard]}: truncated (cannot read {size} at {offset})")
        return buffer

    def close(self) -> None:
        """Close every open shard."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, object]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["paths"])  # type: ignore[misc]

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class JpegShards:
    """Every sample of a split: shard number, JPEG offset and size, label, and key."""

    files: ShardFiles
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    labels: np.ndarray
    keys: tuple[str, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def jpeg(self, index: int) -> bytearray:
        """The encoded JPEG of sample ``index``."""
        return self.files.read(
            int(self.shard[index]), int(self.offset[index]), int(self.size[index])
        )

    def describe(self, index: int) -> str:
        """``shard path: key.jpg``, for error messages."""
        return f"{self.files.paths[int(self.shard[index])]}: {self.keys[index]}.jpg"


def load_imagenet_split(data_dir: Path, split: str) -> JpegShards:
    """Index a split of a preprocessed ImageNet folder (``index.json``, shards, index files).

    Raises:
        DataError: a file is missing or malformed, or a label is not a class index.
    """
    data_dir = Path(data_dir)
    classes, shard_names, index_names = _read_index_json(data_dir, split)
    paths = tuple(data_dir / name for name in shard_names)
    files = ShardFiles(paths)
    columns: list[list[int]] = [[], [], [], []]
    keys: list[str] = []
    for number, (tar_path, idx_name) in enumerate(zip(paths, index_names, strict=True)):
        try:
            tar_size = tar_path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{tar_path}: no such file (run the preprocess stage)") from None
        for key, jpg_offset, jpg_size, cls_offset, cls_size in _parse_index(
            data_dir / idx_name, tar_size
        ):
            text = files.read(number, cls_offset, cls_size).decode("ascii", "replace").strip()
            if not text.isdigit() or int(text) >= len(classes):
                raise DataError(
                    f"{tar_path}: {key}.cls: label {text!r} is not a class index "
                    f"in [0, {len(classes)})"
                )
            for column, value in zip(
                columns, (number, jpg_offset, jpg_size, int(text)), strict=True
            ):
                column.append(value)
            keys.append(key)
    files.close()
    if not keys:
        raise DataError(f"{data_dir / 'index.json'}: split {split!r} has no samples")
    shard, offset, size, labels = (np.asarray(c, dtype=np.int64) for c in columns)
    return JpegShards(files, shard, offset, size, labels, tuple(keys), classes)
