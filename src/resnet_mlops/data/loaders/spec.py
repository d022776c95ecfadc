"""``LoaderSpec``: what a loader reads, how it cuts it into batches, and where they go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_mlops.data.loaders.epochs import check_shard
from resnet_mlops.data.loaders.recipe import ImagenetMode
from resnet_mlops.params.loader import Dataset, LoaderParams, MemoryFormat


@dataclass(frozen=True)
class LoaderSpec:
    """One loader's request, built once by its caller and handed down to the backend.

    Attributes:
        dataset: ``"cifar10"`` or ``"imagenet"``.
        split: ``"train"``, ``"val"`` or ``"test"``, as the preprocessed folder has them.
        data_dir: the preprocessed folder, e.g. ``data/preprocessed/cifar10``.
        batch_size: samples per batch on this rank.
        params: backend, threads, normalisation and augmentation (the ``loader`` section).
        train: augment and shuffle; by default (``None``) only the ``train`` split does.
        ten_crop: ImageNet evaluation on ten crops instead of the centre crop.
        memory_format: ``"contiguous"`` (NCHW) or ``"channels_last"``.
        shard_id: this rank, in ``[0, num_shards)``.
        num_shards: ranks that share the split; their parts are disjoint.
        seed: the seed of the sample order and of the augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; with DALI a CUDA device
            puts the pipeline on that GPU, the CPU runs DALI's CPU-only mode.

    Raises:
        ValueError: an argument is out of its range (when the spec is made).
    """

    dataset: Dataset
    split: str
    data_dir: Path
    batch_size: int
    params: LoaderParams = LoaderParams()  # noqa: RUF009 (frozen, so a shared default is safe)
    train: bool | None = None
    ten_crop: bool = False
    memory_format: MemoryFormat = "contiguous"
    shard_id: int = 0
    num_shards: int = 1
    seed: int = 0
    device: str | torch.device = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        check_shard(self.shard_id, self.num_shards)
        if self.ten_crop and (self.dataset != "imagenet" or self.training):
            raise ValueError("ten_crop is an ImageNet evaluation protocol (train=False)")

    @property
    def training(self) -> bool:
        """Whether batches are augmented and the order shuffled."""
        return self.split == "train" if self.train is None else self.train

    @property
    def hwc(self) -> bool:
        """Whether images are laid out channels-last (DALI writes them ``HWC``)."""
        return self.memory_format == "channels_last"

    @property
    def imagenet_mode(self) -> ImagenetMode:
        """The ImageNet recipe: the configured augmentation, or an evaluation crop."""
        if self.training:
            return self.params.imagenet_augmentation
        return "ten_crop" if self.ten_crop else "center_crop"

    def resolved_device(self) -> torch.device:
        """``auto`` -> the current CUDA device if there is one, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
