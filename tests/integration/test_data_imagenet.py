"""prepare + preprocess on ImageNet-layout data: the real sample, and a train/val layout with
the awkward files the real data set has (CMYK JPEGs, PNGs named .JPEG, grayscale)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_mlops.data.prepare import PrepareParams, prepare
from resnet_mlops.data.preprocess import PreprocessParams, preprocess
from resnet_mlops.errors import DataError
from resnet_mlops.params.base import load_stage_params
from tests.support.project import IMAGENET_SAMPLE, PARAMS


def run_stages(tmp: Path, source: Path, *preprocess_overrides: str) -> tuple[Path, Path]:
    prep = load_stage_params(
        PARAMS, "prepare", PrepareParams, [f"prepare.imagenet.source={source}"]
    )[1]
    pre = load_stage_params(PARAMS, "preprocess", PreprocessParams, list(preprocess_overrides))[1]
    prepared, out = tmp / "prepared", tmp / "preprocessed"
    prepare("imagenet", prep, prepared, tmp / "prepare.json", tmp / "downloads")
    preprocess("imagenet", pre, prepared, out, tmp / "preprocess.json")
    return prepared, out


def read_shards(out: Path, split: str) -> list[tuple[str, bytes, int]]:
    index = json.loads((out / "index.json").read_text())
    samples = []
    for shard, idx in zip(
        index["splits"][split]["shards"], index["splits"][split]["indexes"], strict=True
    ):
        data = (out / shard).read_bytes()
        lines = (out / idx).read_text().splitlines()
        assert lines[0] == f"v1.2 {len(lines) - 1}"
        for line in lines[1:]:
            ext1, off1, size1, name1, ext2, off2, size2, _ = line.split()
            assert (ext1, ext2) == ("jpg", "cls")
            jpeg = data[int(off1) : int(off1) + int(size1)]
            label = int(data[int(off2) : int(off2) + int(size2)])
            samples.append((name1, jpeg, label))
    return samples


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_sample_prepared_and_sharded(tmp_path: Path) -> None:
    prepared, out = run_stages(tmp_path, IMAGENET_SAMPLE, "preprocess.imagenet.shard_size=300")
    report = json.loads((tmp_path / "prepare.json").read_text())
    assert report["classes"] == 1000 and report["images"] == {"train": 1000}
    assert report["formats"] == {"JPEG/L": 23, "JPEG/RGB": 977}
    classes = json.loads((prepared / "classes.json").read_text())
    assert classes["wnids"] == sorted(classes["wnids"]) and classes["wnids"][0] == "n01440764"
    assert classes["names"][0] == "tench"

    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["samples"] == 1000
    assert index["splits"]["train"]["shards"] == [f"train-{i:05d}.tar" for i in range(4)]
    assert index["splits"]["val"]["alias_of"] == "train"
    samples = read_shards(out, "train")
    # Each shard sample is a source image with its label: the label is its wnid's position.
    with tarfile.open(IMAGENET_SAMPLE) as archive:
        truth = {
            hashlib.sha256(archive.extractfile(m).read()).hexdigest(): m.name.split("/")[0]
            for m in archive
            if m.isfile()
        }
    for _, jpeg, label in samples:
        assert classes["wnids"][label] == truth[hashlib.sha256(jpeg).hexdigest()]
    labels = [label for _, _, label in samples]
    assert sorted(labels) == list(range(1000))
    assert labels[:300] != sorted(labels[:300])  # training shards are shuffled

    before = digests(out)
    preprocess(
        "imagenet",
        load_stage_params(
            PARAMS, "preprocess", PreprocessParams, ["preprocess.imagenet.shard_size=300"]
        )[1],
        prepared,
        tmp_path / "again",
        tmp_path / "r.json",
    )
    assert digests(tmp_path / "again") == before


@pytest.fixture
def awkward_tree(tmp_path: Path) -> Path:
    """train/ and val/ of 3 classes from real sample images, plus a CMYK JPEG, a PNG named
    .JPEG and a grayscale JPEG, as the real ImageNet has."""
    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537", "n01484850"]
    with tarfile.open(IMAGENET_SAMPLE) as archive:
        real = {
            m.name.split("/")[0]: archive.extractfile(m).read()
            for m in archive
            if m.isfile() and m.name.split("/")[0] in wnids
        }
    for split in ("train", "val"):
        for index, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            (folder / f"{wnid}_{index}.JPEG").write_bytes(real[wnid])
    image = Image.open(io.BytesIO(real[wnids[0]]))
    cmyk, png, gray = io.BytesIO(), io.BytesIO(), io.BytesIO()
    image.convert("CMYK").save(cmyk, format="JPEG")
    image.convert("RGB").save(png, format="PNG")
    image.convert("L").save(gray, format="JPEG")
    (root / "train" / wnids[1] / f"{wnids[1]}_cmyk.JPEG").write_bytes(cmyk.getvalue())
    (root / "train" / wnids[2] / f"{wnids[2]}_png.JPEG").write_bytes(png.getvalue())
    (root / "val" / wnids[2] / f"{wnids[2]}_gray.JPEG").write_bytes(gray.getvalue())
    return root


def test_train_val_layout_converts_only_what_decoders_should_not_meet(
    tmp_path: Path, awkward_tree: Path
) -> None:
    _, out = run_stages(tmp_path, awkward_tree)
    report = json.loads((tmp_path / "preprocess.json").read_text())
    assert report["samples"] == {"train": 5, "val": 4} and report["reencoded"] == 2
    originals = {hashlib.sha256(p.read_bytes()).digest() for p in awkward_tree.rglob("*.JPEG")}
    kept = converted = 0
    for _, jpeg, _ in read_shards(out, "train") + read_shards(out, "val"):
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.format == "JPEG" and image.mode in ("RGB", "L")
        if hashlib.sha256(jpeg).digest() in originals:
            kept += 1
        else:
            converted += 1
    assert (kept, converted) == (7, 2)
    val_labels = [label for _, _, label in read_shards(out, "val")]
    assert val_labels == [0, 1, 2, 2]  # validation keeps the sorted file order


def test_max_side_shrinks_larger_images(tmp_path: Path, awkward_tree: Path) -> None:
    _, out = run_stages(tmp_path, awkward_tree, "preprocess.imagenet.max_side=64")
    for _, jpeg, _ in read_shards(out, "train"):
        with Image.open(io.BytesIO(jpeg)) as image:
            assert min(image.size) <= 64


def test_class_missing_from_val_fails(tmp_path: Path, awkward_tree: Path) -> None:
    for path in (awkward_tree / "val" / "n01443537").iterdir():
        path.unlink()
    (awkward_tree / "val" / "n01443537").rmdir()
    with pytest.raises(DataError, match=r"class 'n01443537' is in train but not in val"):
        run_stages(tmp_path, awkward_tree)


def test_source_changed_after_prepare_is_caught(tmp_path: Path, awkward_tree: Path) -> None:
    prep = load_stage_params(
        PARAMS, "prepare", PrepareParams, [f"prepare.imagenet.source={awkward_tree}"]
    )[1]
    prepare("imagenet", prep, tmp_path / "prepared", tmp_path / "p.json", tmp_path / "dl")
    victim = awkward_tree / "val" / "n01440764" / "n01440764_0.JPEG"
    victim.write_bytes(victim.read_bytes() + b"\0")
    pre = load_stage_params(PARAMS, "preprocess", PreprocessParams)[1]
    with pytest.raises(DataError, match=r"n01440764_0.JPEG: changed since the prepare stage"):
        preprocess("imagenet", pre, tmp_path / "prepared", tmp_path / "out", tmp_path / "r.json")
    assert not (tmp_path / "out").exists()
    assert np.array([p.name for p in tmp_path.iterdir() if p.name.startswith(".")]).size == 0
