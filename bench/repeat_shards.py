"""A small preprocessed ImageNet folder that reads a few hundred images over and over.

For the GPU throughput check, which must carry its data to the device machine (the shared
datasets do not travel, and a carried folder is limited in size): the first ``--samples``
images of a preprocessed split go into one shard, and ``index.json`` lists that shard
``--repeats`` times, so that one epoch is ``samples * repeats`` images and the pipeline runs
long enough between epoch boundaries to be measured. Example::

    python bench/repeat_shards.py data/preprocessed/imagenet data/imagenet-repeat \\
        --samples 300 --repeats 20
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

from resnet_mlops.data.loaders import load_imagenet_split


def repeat_shards(
    source: Path,
    target: Path,
    split: str,
    samples: int,
    repeats: int,
    val_repeats: int | None = None,
) -> str:
    """Write ``target``: the first ``samples`` images of ``source``'s ``split`` in one shard,
    listed ``repeats`` times in ``index.json`` for ``train`` and ``val_repeats`` (default the
    same) for ``val``; a one-line description of what it wrote."""
    shards = load_imagenet_split(source, split)
    count = min(samples, len(shards))
    target.mkdir(parents=True, exist_ok=True)
    tar_path, idx_path = target / "train-00000.tar", target / "train-00000.idx"
    lines = []
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(count):
            members = []
            for ext, payload in (
                ("jpg", bytes(shards.jpeg(index))),
                ("cls", str(int(shards.labels[index])).encode()),
            ):
                info = tarfile.TarInfo(f"{index:08d}.{ext}")
                info.size = len(payload)
                # The header is one 512-byte block, so the data starts right after it.
                members.append(f"{ext} {tar.offset + 512} {info.size} {info.name}")
                tar.addfile(info, io.BytesIO(payload))
            lines.append(" ".join(members))
    idx_path.write_text(f"v1.2 {count}\n" + "\n".join(lines) + "\n")

    def entry(times: int) -> dict:
        return {
            "shards": [tar_path.name] * times,
            "indexes": [idx_path.name] * times,
            "samples": count * times,
        }

    splits = {"train": entry(repeats), "val": entry(val_repeats or repeats)}
    index = {"classes": list(shards.classes), "splits": splits}
    (target / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    size = tar_path.stat().st_size / 2**20
    return f"{target}: {count} images ({size:.0f} MiB), {count * repeats} per epoch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a preprocessed ImageNet folder")
    parser.add_argument("target", type=Path, help="the folder to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--val-repeats", type=int, default=None, help="default: --repeats")
    args = parser.parse_args()
    print(
        repeat_shards(
            args.source, args.target, args.split, args.samples, args.repeats, args.val_repeats
        )
    )


if __name__ == "__main__":
    main()
