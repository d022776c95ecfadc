"""Input pipelines: NVIDIA DALI on the GPU or the CPU, and a torchvision fallback.

``build_loader(LoaderSpec(dataset, split, data_dir, batch_size, params=...))`` gives an iterable
of ``(images, labels)`` PyTorch batches with ``len()`` and ``set_epoch()``. DALI is imported
only when it is used, so the fallback works where DALI does not install.
"""

from resnet_mlops.data.loaders.build import (
    Loader,
    build_loader,
    dali_available,
    dataset_classes,
    resolve_backend,
)
from resnet_mlops.data.loaders.cifar_arrays import CifarSplit, evaluation_split, load_cifar_split
from resnet_mlops.data.loaders.epochs import epoch_order
from resnet_mlops.data.loaders.jpeg_shards import JpegShards, load_imagenet_split
from resnet_mlops.data.loaders.spec import LoaderSpec
from resnet_mlops.params.loader import IMAGENET_MEAN, IMAGENET_STD, LoaderParams

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CifarSplit",
    "JpegShards",
    "Loader",
    "LoaderParams",
    "LoaderSpec",
    "build_loader",
    "dali_available",
    "dataset_classes",
    "epoch_order",
    "evaluation_split",
    "load_cifar_split",
    "load_imagenet_split",
    "resolve_backend",
]
