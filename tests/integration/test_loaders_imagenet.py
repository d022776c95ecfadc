"""ImageNet pipelines on real sample JPEGs: DALI and the torch fallback agree on evaluation,
training batches have the promised shape and layout, grayscale JPEGs come out as RGB."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnet_mlops.data.loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoaderParams,
    LoaderSpec,
    build_loader,
)
from tests.support.data_fixtures import imagenet_jpegs, write_imagenet_dir

BACKENDS = ["dali", "torch"]
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real images (2 grayscale), one class each, in 3 shards."""
    return write_imagenet_dir(tmp_path_factory.mktemp("imagenet"), imagenet_jpegs(12), shard_size=5)


def epoch(data_dir: Path, backend: str, split: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    params = LoaderParams(
        backend=backend,
        num_threads=1,
        imagenet_augmentation=kwargs.pop("augmentation", "random_resized_crop"),
    )
    loader = build_loader(
        LoaderSpec("imagenet", split, data_dir, 5, params=params, device="cpu", **kwargs)
    )
    images, labels = zip(*loader, strict=True)
    assert len(images) == len(loader)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_eval_outputs_agree_between_backends_to_decoder_rounding(
    imagenet_dir: Path, ten_crop: bool
) -> None:
    (dali, dali_labels), (fallback, labels) = (
        epoch(imagenet_dir, backend, "val", ten_crop=ten_crop) for backend in BACKENDS
    )
    assert labels.tolist() == list(range(12)) == dali_labels.tolist()
    shape = (12, 10, 3, 224, 224) if ten_crop else (12, 3, 224, 224)
    assert dali.shape == fallback.shape == shape
    # Compare in 0..255 pixel units: the same libjpeg-turbo decode, the same resize grid and
    # crop offsets; what is left is rounding of the resampled uint8 values (one level), and, on
    # the outermost row or column of the resized image (a corner crop's edge), the resize
    # filters' different border handling (a few levels).
    pixels = (dali - fallback).abs() * STD
    assert pixels[..., 1:-1, 1:-1].max() <= 1.0 + 1e-3
    assert pixels.max() <= 8.0
    assert pixels.mean() <= 0.3
    if ten_crop:  # the second five are the first five mirrored
        torch.testing.assert_close(dali[:, 5:], dali[:, :5].flip(-1))
        center = epoch(imagenet_dir, "dali", "val")[0]
        torch.testing.assert_close(dali[:, 4], center)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("augmentation", ["random_resized_crop", "scale"])
def test_train_batches_have_the_asked_shape_and_layout(
    imagenet_dir: Path, backend: str, augmentation: str
) -> None:
    images, labels = epoch(
        imagenet_dir, backend, "train", augmentation=augmentation, memory_format="channels_last"
    )
    assert images.shape == (12, 3, 224, 224) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == list(range(12))
    params = LoaderParams(backend=backend, num_threads=1, imagenet_augmentation=augmentation)
    loader = build_loader(
        LoaderSpec(
            "imagenet",
            "train",
            imagenet_dir,
            4,
            params=params,
            memory_format="channels_last",
            device="cpu",
        )
    )
    batch, _ = next(iter(loader))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    pixels = images * STD + MEAN  # back to 0..255: a real image, not garbage
    assert pixels.min() >= -0.5 and pixels.max() <= 255.5 and pixels.std() > 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_crop_reshapes_to_channels_last(imagenet_dir: Path, backend: str) -> None:
    params = LoaderParams(backend=backend, num_threads=1)
    loader = build_loader(
        LoaderSpec(
            "imagenet",
            "val",
            imagenet_dir,
            4,
            params=params,
            ten_crop=True,
            memory_format="channels_last",
            device="cpu",
        )
    )
    images, _ = next(iter(loader))
    assert images.shape == (4, 10, 3, 224, 224)
    assert images.reshape(-1, 3, 224, 224).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_jpegs_come_out_as_three_equal_channels(imagenet_dir: Path, backend: str) -> None:
    images, _ = epoch(imagenet_dir, backend, "val")
    pixels = images * STD + MEAN
    gray = [i for i in range(12) if torch.allclose(pixels[i, 0], pixels[i, 1], atol=1e-3)]
    assert len(gray) == 2  # the fixture holds two grayscale JPEGs
    for i in gray:
        torch.testing.assert_close(pixels[i, 1], pixels[i, 2], atol=1e-3, rtol=0)
