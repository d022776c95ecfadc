"""``build_loader``: the one entry point for training and evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import torch

from resnet_mlops.data.loaders.cifar_arrays import load_cifar_split, normalization
from resnet_mlops.data.loaders.epochs import check_shard
from resnet_mlops.data.loaders.jpeg_shards import load_imagenet_split
from resnet_mlops.data.loaders.recipe import ImagenetMode
from resnet_mlops.data.loaders.torch_loader import CifarDataset, ImagenetDataset, TorchLoader
from resnet_mlops.data.loaders.torch_transforms import ImagenetTransform, cifar10_train_augment
from resnet_mlops.errors import DataError
from resnet_mlops.io import read_json
from resnet_mlops.params.base import ConfigError
from resnet_mlops.params.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backend,
    Dataset,
    LoaderParams,
    MemoryFormat,
)


class Loader(Protocol):
    """What :func:`build_loader` returns, whichever the backend."""

    backend: str
    batch_size: int
    num_samples: int  # this rank's samples per epoch
    epoch: int  # the epoch the next pass reads

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def dali_available() -> bool:
    """Whether DALI and its PyTorch plugin can be imported here."""
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # a wheel for another CUDA or platform fails in many ways
        return False
    return True


def resolve_backend(backend: Backend) -> Literal["dali", "torch"]:
    """``auto`` -> ``dali`` where it imports, else ``torch``.

    Raises:
        ConfigError: ``dali`` was asked for and does not import.
    """
    if backend == "torch":
        return "torch"
    if dali_available():
        return "dali"
    if backend == "dali":
        raise ConfigError("loader.backend: 'dali' was asked for, but nvidia.dali does not import")
    return "torch"


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> the current CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def dataset_classes(dataset: Dataset, data_dir: Path) -> tuple[str, ...]:
    """The class names of a preprocessed folder (``stats.json`` or ``index.json``), read
    without loading the data.

    Raises:
        DataError: the file is missing or has no class list.
    """
    path = Path(data_dir) / ("stats.json" if dataset == "cifar10" else "index.json")
    content = read_json(path, "run the preprocess stage")
    classes = content.get("classes") if isinstance(content, dict) else None
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{path}: expected a non-empty list of classes")
    return tuple(str(c) for c in classes)


def build_loader(
    dataset: Dataset,
    split: str,
    data_dir: Path,
    batch_size: int,
    *,
    params: LoaderParams = LoaderParams(),  # noqa: B008 (frozen, so a shared default is safe)
    train: bool | None = None,
    ten_crop: bool = False,
    memory_format: MemoryFormat = "contiguous",
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> Loader:
    """Batches of ``(images, labels)`` from a preprocessed split, one epoch per pass.

    Images are float32 ``(B, 3, H, W)`` (``(B, 10, 3, 224, 224)`` with ``ten_crop``) in the
    requested memory format, labels int64 ``(B,)``, both on ``device``. Each epoch reads every
    sample of this rank's part exactly once, in an order drawn from ``(seed, epoch)`` when
    training; the last batch is partial. ``len(loader)`` is the batches per epoch; the epoch
    advances after each full pass and :meth:`Loader.set_epoch` sets it.

    Args:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        split: ``"train"``, ``"val"`` or ``"test"``, as the preprocessed folder has them.
        data_dir: the preprocessed folder, e.g. ``data/preprocessed/cifar10``.
        batch_size: samples per batch on this rank.
        params: backend, threads, normalisation and augmentation (the ``loader`` section).
        train: augment and shuffle; by default only the ``train`` split does.
        ten_crop: ImageNet evaluation on ten crops instead of the centre crop.
        memory_format: ``"contiguous"`` (NCHW) or ``"channels_last"``.
        shard_id: this rank, in ``[0, num_shards)``.
        num_shards: ranks that share the split; their parts are disjoint.
        seed: the seed of the sample order and of the augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; with DALI a CUDA device
            puts the pipeline on that GPU, the CPU runs DALI's CPU-only mode.

    Raises:
        DataError: a preprocessed file is missing or malformed, or a label is out of range
            (at build time), or a JPEG does not decode (while iterating). One line, naming
            the file.
        ConfigError: ``params.backend`` is ``dali`` and DALI does not import.
        ValueError: an argument is out of its range.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_shard(shard_id, num_shards)
    train = split == "train" if train is None else train
    if ten_crop and (dataset != "imagenet" or train):
        raise ValueError("ten_crop is an ImageNet evaluation protocol (train=False)")
    backend = resolve_backend(params.backend)
    device = resolve_device(device)
    common = {
        "batch_size": batch_size,
        "shuffle": train,
        "seed": seed,
        "shard_id": shard_id,
        "num_shards": num_shards,
        "memory_format": memory_format,
        "device": device,
    }
    if dataset == "cifar10":
        data = load_cifar_split(Path(data_dir), split)
        shift, scale = normalization(data, params.cifar_normalization)
        if backend == "torch":
            augment = cifar10_train_augment() if train else None
            cifar = CifarDataset(data, shift, scale, augment)
            return TorchLoader(cifar, num_workers=params.num_threads, **common)
        from resnet_mlops.data.loaders.dali_builders import cifar10_dali_loader

        return cifar10_dali_loader(
            data,
            shift,
            scale,
            where=str(data_dir),
            train=train,
            num_threads=params.num_threads,
            **common,
        )
    if dataset == "imagenet":
        shards = load_imagenet_split(Path(data_dir), split)
        mode: ImagenetMode = (
            params.imagenet_augmentation if train else "ten_crop" if ten_crop else "center_crop"
        )
        if backend == "torch":
            transform = ImagenetTransform(mode, IMAGENET_MEAN, IMAGENET_STD)
            imagenet = ImagenetDataset(shards, transform)
            return TorchLoader(imagenet, num_workers=params.num_threads, **common)
        from resnet_mlops.data.loaders.dali_builders import imagenet_dali_loader

        return imagenet_dali_loader(shards, mode=mode, num_threads=params.num_threads, **common)
    raise ValueError(f"unknown dataset {dataset!r}; expected 'cifar10' or 'imagenet'")
