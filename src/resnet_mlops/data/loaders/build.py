"""``build_loader``: the one entry point for training and evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import torch

from resnet_mlops.data.loaders.cifar_arrays import load_cifar_split, normalization
from resnet_mlops.data.loaders.jpeg_shards import load_imagenet_split
from resnet_mlops.data.loaders.spec import LoaderSpec
from resnet_mlops.data.loaders.torch_loader import CifarDataset, ImagenetDataset, TorchLoader
from resnet_mlops.data.loaders.torch_transforms import ImagenetTransform, cifar10_train_augment
from resnet_mlops.errors import DataError
from resnet_mlops.io import read_json
from resnet_mlops.params.base import ConfigError
from resnet_mlops.params.loader import IMAGENET_MEAN, IMAGENET_STD, Backend, Dataset


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


def build_loader(spec: LoaderSpec) -> Loader:
    """Batches of ``(images, labels)`` from a preprocessed split, one epoch per pass.

    Images are float32 ``(B, 3, H, W)`` (``(B, 10, 3, 224, 224)`` with ``spec.ten_crop``) in
    the requested memory format, labels int64 ``(B,)``, both on ``spec.device``. Each epoch
    reads every sample of this rank's part exactly once, in an order drawn from
    ``(seed, epoch)`` when training; the last batch is partial. ``len(loader)`` is the batches
    per epoch; the epoch advances after each full pass and :meth:`Loader.set_epoch` sets it.

    Args:
        spec: what to read, how to batch it and where the batches go.

    Raises:
        DataError: a preprocessed file is missing or malformed, or a label is out of range
            (at build time), or a JPEG does not decode (while iterating). One line, naming
            the file.
        ConfigError: ``spec.params.backend`` is ``dali`` and DALI does not import.
        ValueError: the dataset is unknown.
    """
    if spec.dataset == "cifar10":
        return _cifar10_loader(spec)
    if spec.dataset == "imagenet":
        return _imagenet_loader(spec)
    raise ValueError(f"unknown dataset {spec.dataset!r}; expected 'cifar10' or 'imagenet'")


def _cifar10_loader(spec: LoaderSpec) -> Loader:
    backend = resolve_backend(spec.params.backend)
    device = spec.resolved_device()
    data = load_cifar_split(Path(spec.data_dir), spec.split)
    shift, scale = normalization(data, spec.params.cifar_normalization)
    if backend == "torch":
        augment = cifar10_train_augment() if spec.training else None
        return TorchLoader(CifarDataset(data, shift, scale, augment), spec, device)
    from resnet_mlops.data.loaders.dali_builders import cifar10_dali_loader

    return cifar10_dali_loader(data, shift, scale, spec, device)


def _imagenet_loader(spec: LoaderSpec) -> Loader:
    backend = resolve_backend(spec.params.backend)
    device = spec.resolved_device()
    shards = load_imagenet_split(Path(spec.data_dir), spec.split)
    if backend == "torch":
        transform = ImagenetTransform(spec.imagenet_mode, IMAGENET_MEAN, IMAGENET_STD)
        return TorchLoader(ImagenetDataset(shards, transform), spec, device)
    from resnet_mlops.data.loaders.dali_builders import imagenet_dali_loader

    return imagenet_dali_loader(shards, spec, device)
