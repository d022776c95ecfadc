"""The preprocess stage: verified raw data in, the training format out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resnet_mlops.data import cifar10, imagenet
from resnet_mlops.data.sources import Problem, iter_source_files
from resnet_mlops.errors import DataError
from resnet_mlops.io import (
    atomic_directory,
    check_output_file,
    check_output_folder,
    describe_outputs,
    read_json,
    save_array,
    write_json_atomic,
)
from resnet_mlops.params.prepare import Dataset
from resnet_mlops.params.preprocess import PreprocessParams


def _load_manifest(prepared: Path, dataset: str) -> dict[str, Any]:
    path = prepared / "manifest.json"
    manifest = read_json(path, "run the prepare stage first")
    if manifest.get("dataset") != dataset:
        raise DataError(f"{path}: prepared for {manifest.get('dataset')!r}, not {dataset!r}")
    return manifest


def _load_array(path: Path, dtype: type, ndim: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the prepare stage first)") from None
    except ValueError as error:
        raise DataError(f"{path}: not a NumPy array file ({error})") from None
    if array.dtype != dtype or array.ndim != ndim:
        raise DataError(
            f"{path}: expected {ndim}-d {np.dtype(dtype)}, got {array.dtype} {array.shape}"
        )
    return array


def preprocess_cifar10(
    params: PreprocessParams,
    prepared: Path,
    out_dir: Path,
    report_path: Path,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Split off the validation set and compute the normalisation statistics.

    Writes ``{train,val,test}_{images,labels}.npy`` (uint8 NHWC, int64), ``mean_image.npy``
    (the paper's per-pixel mean, float32 in 0..255), ``stats.json`` and ``manifest.json``.
    """
    manifest = _load_manifest(prepared, "cifar10")
    arrays = {}
    for split in cifar10.SPLITS:
        images = _load_array(prepared / f"{split}_images.npy", np.uint8, 4)
        labels = _load_array(prepared / f"{split}_labels.npy", np.int64, 1)
        if images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
            raise DataError(
                f"{prepared}/{split}_images.npy: expected (N, 32, 32, 3), got {images.shape}"
            )
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    settings = params.cifar10
    splits = {"test": arrays["test"]}
    if settings.val_size > 0:
        train_idx, val_idx = cifar10.stratified_split(
            train_labels, settings.val_size, settings.seed, f"{prepared}: val_size"
        )
        splits["train"] = (train_images[train_idx], train_labels[train_idx])
        splits["val"] = (train_images[val_idx], train_labels[val_idx])
    else:
        splits["train"] = (train_images, train_labels)
    if not len(splits["train"][1]):
        raise DataError(
            f"{prepared}: val_size {settings.val_size} leaves no training images "
            f"(of {len(train_labels)})"
        )
    params_record = {"val_size": settings.val_size, "seed": settings.seed}
    if settings.train_size > 0:
        images, labels = splits["train"]
        if settings.train_size > len(labels):
            raise DataError(
                f"{prepared}: train_size {settings.train_size} asks for more than the "
                f"{len(labels)} training images left after the validation split"
            )
        _, keep = cifar10.stratified_split(
            labels, settings.train_size, settings.seed, f"{prepared}: train_size"
        )
        splits["train"] = (images[keep], labels[keep])
        # Recorded only when set, so the default's outputs stay byte-identical to earlier ones.
        params_record["train_size"] = settings.train_size
    mean_image, channel_mean, channel_std = cifar10.image_statistics(splits["train"][0])
    stats = {
        "classes": manifest["classes"],
        "mean": channel_mean,
        "std": channel_std,
        "splits": {split: len(labels) for split, (_, labels) in sorted(splits.items())},
    }
    with atomic_directory(out_dir, "preprocess", force=force) as tmp:
        for split, (images, labels) in splits.items():
            save_array(tmp / f"{split}_images.npy", np.ascontiguousarray(images))
            save_array(tmp / f"{split}_labels.npy", labels)
        save_array(tmp / "mean_image.npy", mean_image)
        write_json_atomic(tmp / "stats.json", stats)
        write_json_atomic(
            tmp / "manifest.json",
            {
                "dataset": "cifar10",
                "prepared": manifest["outputs"],
                "params": params_record,
                "outputs": describe_outputs(tmp),
            },
        )
    report = {"dataset": "cifar10", **{k: stats[k] for k in ("splits", "mean", "std")}}
    write_json_atomic(report_path, report)
    return report


def preprocess_imagenet(
    params: PreprocessParams,
    prepared: Path,
    out_dir: Path,
    report_path: Path,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Pack the verified images into webdataset shards with DALI index files.

    Original JPEG bytes are kept; only CMYK JPEGs, non-JPEG files and (when ``max_side`` is
    set) larger images are re-encoded as RGB JPEG.
    """
    manifest = _load_manifest(prepared, "imagenet")
    classes = read_json(prepared / "classes.json", "run the prepare stage first")
    entries = {}
    for tsv in sorted(prepared.glob("*.tsv")):
        for entry in imagenet.read_split_tsv(tsv):
            entries[entry.file] = entry
    source = Path(manifest["source"]["path"])
    settings = params.imagenet
    if settings.shard_size < 1:
        raise DataError(
            f"preprocess.imagenet.shard_size must be at least 1, got {settings.shard_size}"
        )
    # Only the listed files are read, none larger than the largest the prepare stage measured
    # (a bigger one has changed since): no file of the source costs more to read than it did.
    largest = max((entry.bytes for entry in entries.values()), default=0)
    refused: list[Problem] = []
    with atomic_directory(out_dir, "preprocess", force=force) as tmp:
        splits, stats, problems = imagenet.pack_shards(
            entries,
            iter_source_files(
                source,
                refused if params.skip_corrupt else None,
                max_bytes=largest,
                only=entries,
            ),
            tmp,
            settings,
            workers=params.workers,
            skip_corrupt=params.skip_corrupt,
            problems=refused,
        )
        if "val" not in splits:
            # A single folder (like the sample) serves as both splits: it proves the path,
            # it does not measure generalisation.
            splits["val"] = {**splits["train"], "alias_of": "train"}
        index = {"classes": classes["wnids"], "names": classes["names"], "splits": splits}
        write_json_atomic(tmp / "index.json", index)
        write_json_atomic(
            tmp / "manifest.json",
            {
                "dataset": "imagenet",
                "prepared": manifest["outputs"],
                "params": {
                    "shard_size": settings.shard_size,
                    "max_side": settings.max_side,
                    "quality": settings.quality,
                    "seed": settings.seed,
                },
                "outputs": describe_outputs(tmp),
            },
        )
    report = {
        "dataset": "imagenet",
        "samples": {split: info["samples"] for split, info in splits.items()},
        "shards": {split: len(info["shards"]) for split, info in splits.items()},
        "reencoded": stats["converted"],
        "skipped_count": len(problems),
        "skipped": [{"file": p.file, "reason": p.reason} for p in problems],
    }
    write_json_atomic(report_path, report)
    return report


def preprocess(
    dataset: Dataset,
    params: PreprocessParams,
    prepared: Path,
    out_dir: Path,
    report_path: Path,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Run the preprocess stage for ``dataset``.

    ``out_dir`` is replaced only if it is missing, empty or a previous preprocess output (its
    manifest says so and lists every file in it), or with ``force`` any folder; never a file.
    ``report_path`` is replaced only if it is a previous preprocess report, or with ``force``
    (:func:`~resnet_mlops.io.check_output_file`). Both are checked before the prepared
    data is read.
    """
    check_output_folder(out_dir, "preprocess", force=force)
    check_output_file(report_path, "preprocess --report", force=force)
    if dataset == "cifar10":
        return preprocess_cifar10(params, prepared, out_dir, report_path, force=force)
    return preprocess_imagenet(params, prepared, out_dir, report_path, force=force)
