"""Loader throughput: the DALI pipeline against torchvision DataLoaders, in images per second.

For each data set's training pipeline it runs, one after the other in this process and with the
same number of threads / worker processes:

* ``dali``: this project's DALI pipeline (CPU-only mode, or the GPU with ``--device cuda``);
* ``torch``: this project's fallback, ``torch.utils.data`` with torchvision ops on tensors
  (``torchvision.io.decode_jpeg``, ``transforms.v2``), the same augmentations as ``dali``;
* ``classic``: the textbook torchvision recipe (PIL decode, ``transforms`` on PIL images,
  ``ToTensor``, ``Normalize``), as in the PyTorch ImageNet example; a reference, not a path of
  this project.

Every loader reads whole epochs; the first (worker start-up, pipeline build, page cache) is not
timed. Example (the figures in BENCHMARKS.md)::

    python bench/loaders.py --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from resnet_mlops.data.loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoaderParams,
    LoaderSpec,
    build_loader,
    load_cifar_split,
    load_imagenet_split,
)
from resnet_mlops.data.loaders.torch_loader import worker_context


class ClassicCifar(Dataset):
    """CIFAR-10 the textbook way: PIL image, pad-and-crop, flip, ToTensor, Normalize."""

    def __init__(self, data_dir: Path) -> None:
        data = load_cifar_split(data_dir, "train")
        self.images, self.labels = data.images, data.labels
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(data.channel_mean / 255, data.channel_std / 255),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class ClassicImagenet(Dataset):
    """ImageNet the textbook way: PIL decode, RandomResizedCrop, flip, ToTensor, Normalize."""

    def __init__(self, data_dir: Path) -> None:
        self.shards = load_imagenet_split(data_dir, "train")
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(
                    [m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD]
                ),
            ]
        )

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.open(io.BytesIO(self.shards.jpeg(index))).convert("RGB")
        return self.transform(image), int(self.shards.labels[index])


def classic_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        multiprocessing_context=worker_context(),  # as the fallback does
    )


def images_per_second(make: Callable[[], Iterable], epochs: int) -> float:
    """Build a loader, read one untimed epoch, then time ``epochs`` more."""
    loader = make()
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for _, labels in loader:
            count += len(labels)
    rate = count / (time.perf_counter() - start)
    del loader
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar-dir", type=Path, default=Path("data/preprocessed/cifar10"))
    parser.add_argument("--imagenet-dir", type=Path, default=Path("data/preprocessed/imagenet"))
    parser.add_argument("--threads", type=int, default=2, help="DALI threads = DataLoader workers")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all loaders")
    parser.add_argument("--cifar-epochs", type=int, default=3, help="timed epochs per loader")
    parser.add_argument("--imagenet-epochs", type=int, default=5, help="timed epochs per loader")
    parser.add_argument("--cifar-batch", type=int, default=128)
    parser.add_argument("--imagenet-batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for DALI on the GPU")
    parser.add_argument("--only", choices=["cifar10", "imagenet"], default=None)
    parser.add_argument(
        "--backends", default="dali,torch,classic", help="comma-separated subset to run"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    def project(dataset: str, data_dir: Path, batch: int, backend: str) -> Callable[[], Iterable]:
        params = LoaderParams(backend=backend, num_threads=args.threads)
        device = args.device if backend == "dali" else "cpu"
        return lambda: build_loader(
            LoaderSpec(dataset, "train", data_dir, batch, params=params, device=device)
        )

    cases = {
        "cifar10": (
            args.cifar_epochs,
            {
                "dali": project("cifar10", args.cifar_dir, args.cifar_batch, "dali"),
                "torch": project("cifar10", args.cifar_dir, args.cifar_batch, "torch"),
                "classic": lambda: classic_loader(
                    ClassicCifar(args.cifar_dir), args.cifar_batch, args.threads
                ),
            },
        ),
        "imagenet": (
            args.imagenet_epochs,
            {
                "dali": project("imagenet", args.imagenet_dir, args.imagenet_batch, "dali"),
                "torch": project("imagenet", args.imagenet_dir, args.imagenet_batch, "torch"),
                "classic": lambda: classic_loader(
                    ClassicImagenet(args.imagenet_dir), args.imagenet_batch, args.threads
                ),
            },
        ),
    }
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    print(f"# {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, threads={args.threads}")
    if torch.cuda.is_available() and args.device != "cpu":
        print(f"# DALI on {torch.cuda.get_device_name(torch.device(args.device))}")
    results = []
    for repeat in range(1, args.repeats + 1):
        for dataset, (epochs, loaders) in cases.items():
            if args.only and dataset != args.only:
                continue
            rates = {}
            for name, make in loaders.items():
                if name in args.backends.split(","):
                    rates[name] = images_per_second(make, epochs)
            line = "  ".join(f"{name} {rate:8.0f} img/s" for name, rate in rates.items())
            ratios = "  ".join(
                f"dali/{name} {rates['dali'] / rates[name]:.2f}x"
                for name in rates
                if name != "dali"
            )
            print(f"run {repeat}  {dataset:8s}  {line}  |  {ratios}", flush=True)
            results.append({"run": repeat, "dataset": dataset, "images_per_s": rates})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
