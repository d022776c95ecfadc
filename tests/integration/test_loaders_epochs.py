"""Epochs and sharding of the input pipelines: every sample once, disjoint ranks, seeded order.

Samples are told apart by their label: these fixtures give every image a class of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader, epoch_order
from resnet_mlops.data.loaders import build as build_module
from resnet_mlops.params.base import ConfigError, from_dict
from tests.support.data_fixtures import (
    cifar_images,
    imagenet_jpegs,
    write_cifar10_dir,
    write_imagenet_dir,
)

BACKENDS = ["dali", "torch"]
NUM_IDS = 100  # not a multiple of the batch size or of the number of shards


@pytest.fixture(scope="module")
def cifar_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 real CIFAR images, each its own class, so a label identifies a sample."""
    images, _ = cifar_images(10)
    ids = np.arange(NUM_IDS, dtype=np.int64)
    classes = tuple(f"image{i}" for i in ids)
    root = tmp_path_factory.mktemp("cifar_ids")
    return write_cifar10_dir(root, {"train": (images, ids), "test": (images, ids)}, classes)


def labels_of_epoch(loader) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def loader(data_dir: Path, backend: str, **kwargs):
    kwargs.setdefault("batch_size", 16)
    return build_loader(
        LoaderSpec(
            "cifar10",
            kwargs.pop("split", "train"),
            data_dir,
            kwargs.pop("batch_size"),
            params=LoaderParams(backend=backend, num_threads=1),
            device="cpu",
            **kwargs,
        )
    )


def test_epoch_order_is_a_seeded_permutation_dealt_to_disjoint_shards() -> None:
    parts = [
        epoch_order(103, epoch=2, seed=7, shuffle=True, shard_id=r, num_shards=4) for r in range(4)
    ]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} == {25, 26}
    again = epoch_order(103, epoch=2, seed=7, shuffle=True, shard_id=1, num_shards=4)
    other = epoch_order(103, epoch=3, seed=7, shuffle=True, shard_id=1, num_shards=4)
    assert again.tolist() == parts[1].tolist() and other.tolist() != parts[1].tolist()
    plain = epoch_order(10, epoch=5, seed=7, shuffle=False, shard_id=1, num_shards=3)
    assert plain.tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="shard_id"):
        epoch_order(10, epoch=0, seed=0, shuffle=True, shard_id=3, num_shards=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_are_disjoint_and_cover_every_sample_once_per_epoch(
    cifar_ids: Path, backend: str
) -> None:
    epochs = []
    for epoch in range(2):
        seen = []
        for rank in range(3):
            rank_loader = loader(cifar_ids, backend, shard_id=rank, num_shards=3, seed=5)
            rank_loader.set_epoch(epoch)
            batches = labels_of_epoch(rank_loader)
            # 34 or 33 samples in batches of 16: the last batch is partial, never padded.
            assert [len(b) for b in batches][:-1] == [16, 16]
            assert len(batches) == len(rank_loader) == 3
            seen.append([label for batch in batches for label in batch])
        assert sorted(sum(seen, [])) == list(range(NUM_IDS))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled each epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_follow_the_seed_and_set_epoch(cifar_ids: Path, backend: str) -> None:
    first = loader(cifar_ids, backend, seed=3)
    passes = [labels_of_epoch(first) for _ in range(3)]
    assert len({str(p) for p in passes}) == 3  # the epoch advances after each pass
    for labels in passes:
        assert sorted(sum(labels, [])) == list(range(NUM_IDS))
    first.set_epoch(1)
    assert labels_of_epoch(first) == passes[1]
    assert labels_of_epoch(loader(cifar_ids, backend, seed=3)) == passes[0]
    assert labels_of_epoch(loader(cifar_ids, backend, seed=4)) != passes[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_pass_does_not_leak_into_the_next(cifar_ids: Path, backend: str) -> None:
    data = loader(cifar_ids, backend, seed=1)
    for _ in data:
        break
    data.set_epoch(0)
    assert labels_of_epoch(data) == labels_of_epoch(loader(cifar_ids, backend, seed=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_an_epochs_batches_follow_from_seed_and_epoch_alone(
    cifar_ids: Path, tmp_path: Path, backend: str, dataset: str
) -> None:
    """What a resumed run relies on: epoch 1 read by a fresh loader (with another number of
    workers) is epoch 1 read after epoch 0, augmentation included."""
    if dataset == "imagenet":
        data_dir = write_imagenet_dir(tmp_path, imagenet_jpegs(6), shard_size=4)
    else:
        data_dir = cifar_ids

    def make(threads: int):
        params = LoaderParams(backend=backend, num_threads=threads)
        return build_loader(
            LoaderSpec(dataset, "train", data_dir, 16, params=params, seed=2, device="cpu")
        )

    straight = make(1)
    epoch0 = [x for x, _ in straight]
    epoch1 = [x for x, _ in straight]
    resumed = make(2)
    resumed.set_epoch(1)
    again = [x for x, _ in resumed]
    assert len(again) == len(epoch1)
    for x, y in zip(again, epoch1, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(epoch0[0], epoch1[0])


def test_backends_read_the_same_order(cifar_ids: Path) -> None:
    orders = {
        b: labels_of_epoch(loader(cifar_ids, b, seed=9, shard_id=1, num_shards=2)) for b in BACKENDS
    }
    assert orders["dali"] == orders["torch"]
    expected = epoch_order(NUM_IDS, epoch=0, seed=9, shuffle=True, shard_id=1, num_shards=2)
    assert sum(orders["dali"], []) == expected.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_reads_in_order(cifar_ids: Path, backend: str) -> None:
    labels = labels_of_epoch(loader(cifar_ids, backend, split="test", batch_size=32))
    assert sum(labels, []) == list(range(NUM_IDS))
    assert [len(b) for b in labels] == [32, 32, 32, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_imagenet_shards_split_across_ranks(tmp_path: Path, backend: str) -> None:
    root = write_imagenet_dir(tmp_path, imagenet_jpegs(10), shard_size=4)  # 3 tar shards
    seen = []
    for rank in range(2):
        data = build_loader(
            LoaderSpec(
                "imagenet",
                "train",
                root,
                3,
                params=LoaderParams(backend=backend, num_threads=1),
                shard_id=rank,
                num_shards=2,
                device="cpu",
            )
        )
        seen.append(sum(labels_of_epoch(data), []))
        assert len(data) == 2 and data.num_samples == 5
    assert sorted(seen[0] + seen[1]) == list(range(10))


def test_loader_params_check_their_values_and_parse_from_config() -> None:
    params = from_dict(LoaderParams, {"backend": "torch", "num_threads": 4}, "loader")
    assert params == LoaderParams(backend="torch", num_threads=4)
    with pytest.raises(ConfigError, match="loader.workers"):
        from_dict(LoaderParams, {"workers": 2}, "loader")
    with pytest.raises(ValueError, match="backend"):
        LoaderParams(backend="pil")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_threads"):
        LoaderParams(num_threads=0)


def test_auto_backend_falls_back_to_torch_without_dali(
    cifar_ids: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build_module.resolve_backend("auto") == "dali"  # installed here
    monkeypatch.setattr(build_module, "dali_available", lambda: False)
    assert build_module.resolve_backend("auto") == "torch"
    assert loader(cifar_ids, "auto").backend == "torch"
    with pytest.raises(ConfigError, match="nvidia.dali does not import"):
        build_module.resolve_backend("dali")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pipeline_matches_the_cpu_pipeline(cifar_ids: Path) -> None:
    kwargs = {"split": "test", "batch_size": 32}
    cpu = [(x, y) for x, y in loader(cifar_ids, "dali", **kwargs)]
    gpu = [
        (x, y)
        for x, y in build_loader(
            LoaderSpec(
                "cifar10", "test", cifar_ids, 32, params=LoaderParams(backend="dali"), device="cuda"
            )
        )
    ]
    assert all(x.is_cuda and y.is_cuda for x, y in gpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-5, rtol=0)


def test_a_loader_spec_refuses_bad_values_when_it_is_made(cifar_ids: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        LoaderSpec("cifar10", "train", cifar_ids, 0)
    with pytest.raises(ValueError, match="shard_id must be in"):
        LoaderSpec("cifar10", "train", cifar_ids, 8, shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="ten_crop is an ImageNet evaluation protocol"):
        LoaderSpec("imagenet", "train", cifar_ids, 8, ten_crop=True)
    spec = LoaderSpec("imagenet", "val", cifar_ids, 8, ten_crop=True)
    assert not spec.training and spec.imagenet_mode == "ten_crop"
    assert LoaderSpec("cifar10", "train", cifar_ids, 8).training
