"""CIFAR-10 pipelines: DALI and the torch fallback agree, and so do their augmentations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader, load_cifar_split
from tests.support.data_fixtures import cifar_images, write_cifar10_dir

BACKENDS = ["dali", "torch"]
NUM_IDS = 128


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real CIFAR images: 100 for train (10 a class), 20 for val and test."""
    train = cifar_images(10)
    test = cifar_images(2, "test")
    root = tmp_path_factory.mktemp("cifar")
    return write_cifar10_dir(root, {"train": train, "val": test, "test": test})


@pytest.fixture(scope="module")
def cifar_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 real images, each its own class, so a label says which image a sample shows."""
    images = cifar_images(13)[0][:NUM_IDS]
    ids = np.arange(NUM_IDS, dtype=np.int64)
    root = tmp_path_factory.mktemp("cifar_ids")
    classes = tuple(f"image{i}" for i in ids)
    return write_cifar10_dir(root, {"train": (images, ids)}, classes)


def batches(
    data_dir: Path, backend: str, split: str, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    params = LoaderParams(
        backend=backend, num_threads=1, cifar_normalization=kwargs.pop("norm", "pixel")
    )
    loader = build_loader(
        LoaderSpec(
            "cifar10",
            split,
            data_dir,
            kwargs.pop("batch_size", 32),
            params=params,
            device="cpu",
            **kwargs,
        )
    )
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def normalized(data_dir: Path, split: str, norm: str) -> torch.Tensor:
    """The reference: ``(x - mean) / std`` computed here, CHW, from the files."""
    data = load_cifar_split(data_dir, split)
    mean = data.mean_image if norm == "pixel" else data.channel_mean
    out = (data.images.astype(np.float64) - mean) / data.channel_std
    return torch.from_numpy(out.astype(np.float32)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("norm", ["pixel", "channel"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_eval_outputs_agree_between_backends(
    cifar_dir: Path, norm: str, memory_format: str
) -> None:
    reference = normalized(cifar_dir, "val", norm)
    outputs = {}
    for backend in BACKENDS:
        images, labels = batches(
            cifar_dir, backend, "val", norm=norm, memory_format=memory_format, batch_size=8
        )
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape == (20, 3, 32, 32)
        assert labels.tolist() == load_cifar_split(cifar_dir, "val").labels.tolist()
        torch.testing.assert_close(images, reference, atol=1e-5, rtol=1e-5)
        outputs[backend] = images
    torch.testing.assert_close(outputs["dali"], outputs["torch"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_train_batches_have_the_asked_layout(
    cifar_dir: Path, backend: str, memory_format: str
) -> None:
    params = LoaderParams(backend=backend, num_threads=1)
    loader = build_loader(
        LoaderSpec(
            "cifar10",
            "train",
            cifar_dir,
            64,
            params=params,
            memory_format=memory_format,
            device="cpu",
        )
    )
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 32, 32) and labels.shape == (64,)
    torch_format = (
        torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    )
    assert images.is_contiguous(memory_format=torch_format)


def infer_crops(data_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each augmented sample, the (dy, dx, flip) that reproduces it exactly from its image:
    dy, dx in 0..8 index the 81 crops of the zero-padded 40x40 normalised image."""
    padded = F.pad(normalized(data_dir, "train", "pixel"), (4, 4, 4, 4))[labels]

    def crop(image: torch.Tensor, dy: int, dx: int, flip: int) -> torch.Tensor:
        window = image[..., dy : dy + 32, dx : dx + 32]
        return window.flip(-1) if flip else window

    candidates = [(dy, dx, flip) for flip in (0, 1) for dy in range(9) for dx in range(9)]
    # Search on every third row and column (fast), then check the winner on every pixel.
    sparse = images[..., ::3, ::3]
    errors = torch.stack(
        [(sparse - crop(padded, *c)[..., ::3, ::3]).abs().flatten(1).amax(1) for c in candidates],
        1,
    )
    best = errors.topk(2, dim=1, largest=False)
    assert (best.values[:, 1] > 1e-2).all()  # one candidate stands out
    found = torch.tensor(candidates)[best.indices[:, 0]]
    exact = torch.stack([crop(padded[i], *c) for i, c in enumerate(found.tolist())])
    # It fits to float rounding: the sample really is normalise, pad, crop and flip.
    torch.testing.assert_close(images, exact, atol=1e-4, rtol=0)
    return found


def chi2_bound(dof: int, z: float = 3.72) -> float:
    """The chi-square quantile at p = 1e-4 (z = 3.72), by Wilson and Hilferty's formula."""
    c = 2 / (9 * dof)
    return dof * (1 - c + z * math.sqrt(c)) ** 3


@pytest.mark.slow
def test_train_augmentation_statistics_match_between_backends(cifar_ids: Path) -> None:
    epochs = 16  # 2048 samples per backend: about 25 per crop position
    histograms = {}
    for backend in BACKENDS:
        params = LoaderParams(backend=backend, num_threads=1)
        loader = build_loader(
            LoaderSpec("cifar10", "train", cifar_ids, 128, params=params, device="cpu")
        )
        parts = [batch for _ in range(epochs) for batch in loader]
        images = torch.cat([x for x, _ in parts])
        labels = torch.cat([y for _, y in parts])
        crops = infer_crops(cifar_ids, images, labels)
        positions = crops[:, 0] * 9 + crops[:, 1]
        counts = torch.bincount(positions, minlength=81).double()
        expected = len(positions) / 81
        assert ((counts - expected) ** 2 / expected).sum() < chi2_bound(80), backend
        flip_rate = crops[:, 2].double().mean().item()
        assert abs(flip_rate - 0.5) < 0.05, (backend, flip_rate)
        histograms[backend] = counts
    # The two backends' crop positions come from one distribution (chi-square homogeneity).
    a, b = histograms["dali"], histograms["torch"]
    pooled = (a + b) / 2
    statistic = (((a - pooled) ** 2 + (b - pooled) ** 2) / pooled).sum()
    assert statistic < chi2_bound(80)
