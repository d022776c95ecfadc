"""Build the data the device check carries: a repeated ImageNet sample and the CIFAR-10 archive.

    python bench/device/carry_data.py  # -> .device/data/{imagenet-repeat,cifar10-jpg.tar.gz}

The ImageNet sample goes through the project's prepare and preprocess stages (into a scratch
folder), then ``bench/repeat_shards.py`` keeps its first ``--samples`` images in one shard that
``index.json`` lists ``--repeats`` times for training, ``--val-repeats`` for the 10-crop test
(about 33 MiB for 300 images). CIFAR-10 travels as
its 19 MB JPEG archive and is prepared on the device (seconds on 16 cores): the preprocessed
arrays are 184 MB, which would take three more device calls.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from resnet_mlops.data.prepare import PrepareParams, prepare
from resnet_mlops.data.preprocess import PreprocessParams, preprocess
from resnet_mlops.errors import DataError
from resnet_mlops.params.base import load_sections

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # bench/ is scripts, not a package

from repeat_shards import repeat_shards  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"


def prepared_imagenet(sample: Path, scratch: Path) -> Path:
    """The ImageNet ``sample`` archive through the prepare and preprocess stages."""
    overrides = ["dataset=imagenet", f"prepare.imagenet.source={sample.resolve()}"]
    params = REPO / "params.yaml"
    _, sections, _ = load_sections(params, {"prepare": PrepareParams}, overrides)
    prepare("imagenet", sections["prepare"], scratch / "prepared", scratch / "prep.json", scratch)
    _, sections, _ = load_sections(params, {"preprocess": PreprocessParams}, overrides)
    out = scratch / "preprocessed"
    preprocess("imagenet", sections["preprocess"], scratch / "prepared", out, scratch / "pre.json")
    return out


def build(
    target: Path,
    imagenet_sample: Path,
    cifar_archive: Path,
    samples: int,
    repeats: int,
    val_repeats: int,
) -> list[str]:
    """Write ``target/imagenet-repeat`` and ``target/cifar10-jpg.tar.gz``; what was written.

    Each is written beside its final name and renamed into place, so a failed build leaves
    the old folder or the new one.
    """
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    with tempfile.TemporaryDirectory(dir=target, prefix=".build-") as scratch:
        scratch_dir = Path(scratch)
        preprocessed = prepared_imagenet(imagenet_sample, scratch_dir)
        fresh = scratch_dir / "imagenet-repeat"
        final = target / "imagenet-repeat"
        written = repeat_shards(preprocessed, fresh, "train", samples, repeats, val_repeats)
        lines.append(written.replace(str(fresh), str(final), 1))
        if final.exists():
            final.rename(scratch_dir / "old")  # this script's earlier output, removed below
        fresh.rename(final)
        copy = scratch_dir / cifar_archive.name
        shutil.copyfile(cifar_archive, copy)
        copy.rename(target / cifar_archive.name)
        lines.append(f"{target / cifar_archive.name}: {copy.name} copied")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".device/data"))
    parser.add_argument("--imagenet", type=Path, default=DATASETS / "imagenet-sample.tar.gz")
    parser.add_argument("--cifar", type=Path, default=DATASETS / "cifar10-jpg.tar.gz")
    parser.add_argument("--samples", type=int, default=300)
    # An epoch of 30,000 images: the DALI loader builds a fresh pipeline for every pass, and
    # at the ~10,000 img/s aimed at, 6,000-image epochs would time a rebuild every 0.6 s.
    parser.add_argument("--repeats", type=int, default=100)
    # The 10-crop test reads the val split: 1,500 images, 16,500 crops, seconds on the GPU.
    parser.add_argument("--val-repeats", type=int, default=5)
    args = parser.parse_args()
    for path in (args.imagenet, args.cifar):
        if not path.exists():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 1
    try:
        lines = build(
            args.out, args.imagenet, args.cifar, args.samples, args.repeats, args.val_repeats
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
