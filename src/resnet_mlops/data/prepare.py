"""The prepare stage: a raw source in, verified raw data, a manifest and a data report out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_mlops.data import cifar10, imagenet
from resnet_mlops.data.sources import (
    Problem,
    check_readable,
    download,
    is_url,
    iter_source_files,
    verify_archive,
)
from resnet_mlops.errors import DataError
from resnet_mlops.io import (
    atomic_directory,
    check_output_file,
    check_output_folder,
    describe_outputs,
    save_array,
    write_json_atomic,
)
from resnet_mlops.params.prepare import (
    Cifar10Source,
    Dataset,
    PrepareParams,
)


@dataclass(frozen=True)
class ResolvedSource:
    """The source actually used, as the data report records it."""

    setting: str
    kind: str  # mirror | download | archive | folder
    path: Path
    sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "kind": self.kind,
            "path": str(self.path),
            "sha256": self.sha256,
        }


def anchor_sources(params: PrepareParams, root: Path) -> PrepareParams:
    """``params`` with relative source paths (the mirror, a folder or archive) taken from
    ``root`` rather than the current folder.

    A queued or ``--temp`` DVC experiment runs in a copy of the project under
    ``.dvc/tmp/exps/``, where ``../shared/datasets`` names nothing; params.yaml's paths are
    relative to the project itself. URLs and absolute paths are left as they are.
    """

    def anchored(value: str) -> str:
        if value in ("", "auto") or is_url(value) or Path(value).is_absolute():
            return value
        return str(root / value)

    cifar = params.cifar10
    # model_copy does not validate again: the anchored paths are strings like the originals.
    return params.model_copy(
        update={
            "cifar10": cifar.model_copy(
                update={"source": anchored(cifar.source), "mirror": anchored(cifar.mirror)}
            ),
            "imagenet": params.imagenet.model_copy(
                update={"source": anchored(params.imagenet.source)}
            ),
        }
    )


def resolve_cifar10_source(params: Cifar10Source, download_dir: Path) -> ResolvedSource:
    """Turn the ``source`` setting into a local path, downloading if it names a URL."""
    setting = params.source
    if setting == "auto":
        mirror = Path(params.mirror)
        if mirror.exists():
            return ResolvedSource(setting, "mirror", mirror)
        setting_url = params.url
    elif is_url(setting):
        setting_url = setting
    else:
        path = Path(setting)
        check_readable(path)
        return ResolvedSource(setting, "folder" if path.is_dir() else "archive", path)
    return ResolvedSource(setting, "download", download(setting_url, download_dir, params.md5))


def report_problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"file": p.file, "reason": p.reason} for p in problems]


def prepare_cifar10(
    params: PrepareParams,
    out_dir: Path,
    report_path: Path,
    download_dir: Path,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Read CIFAR-10 from its source, verify it and write the official splits as arrays.

    Writes ``{train,test}_{images,labels}.npy``, ``{train,test}.tsv`` (the file each image
    came from, and its label), ``classes.json`` and ``manifest.json`` to ``out_dir``
    atomically, and the data report to ``report_path``.
    """
    resolved = resolve_cifar10_source(params.cifar10, download_dir)
    problems: list[Problem] = []
    path = resolved.path
    sha256 = None
    if path.is_file():
        sha256 = verify_archive(path)
    entries = list(
        iter_source_files(
            path, problems if params.skip_corrupt else None, max_bytes=params.max_file_bytes
        )
    )
    names = [name for name, data in entries if data is not None]
    if path.is_file() and cifar10.is_official_archive(names):
        if params.cifar10.md5:
            verify_archive(path, md5=params.cifar10.md5)
        files = {name: data for name, data in entries if data is not None}
        raw = cifar10.read_official(files, str(path))
        layout = "official-pickle"
    else:
        raw = cifar10.read_class_folders(
            entries,
            str(path),
            skip_corrupt=params.skip_corrupt,
            workers=params.workers,
            max_pixels=params.max_pixels,
        )
        layout = "class-folders"
    problems.extend(raw.problems)
    resolved = ResolvedSource(resolved.setting, resolved.kind, path, sha256)
    with atomic_directory(out_dir, "prepare", force=force) as tmp:
        for split, data in raw.splits.items():
            save_array(tmp / f"{split}_images.npy", data.images)
            save_array(tmp / f"{split}_labels.npy", data.labels)
            lines = [
                "file\tlabel",
                *(f"{f}\t{y}" for f, y in zip(data.files, data.labels, strict=True)),
            ]
            (tmp / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        write_json_atomic(tmp / "classes.json", {"wnids": None, "names": list(cifar10.CLASSES)})
        manifest = {
            "dataset": "cifar10",
            "layout": layout,
            "source": resolved.describe(),
            "classes": list(cifar10.CLASSES),
            "outputs": describe_outputs(tmp),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    report = {
        "dataset": "cifar10",
        "source": resolved.describe(),
        "layout": layout,
        "images": {split: len(data.labels) for split, data in raw.splits.items()},
        "per_class": {
            split: {
                cifar10.CLASSES[label]: count
                for label, count in sorted(Counter(data.labels.tolist()).items())
            }
            for split, data in raw.splits.items()
        },
        "skipped_count": len(problems),
        "skipped": report_problems(problems),
        "ignored": raw.ignored,
    }
    write_json_atomic(report_path, report)
    return report


def prepare_imagenet(
    params: PrepareParams, out_dir: Path, report_path: Path, *, force: bool = False
) -> dict[str, Any]:
    """Verify an ImageNet-layout source and write its file lists, classes and manifest.

    The images stay in the source (a real ImageNet is 150 GB); the preprocess stage reads
    them again and checks each against the SHA-256 recorded here.
    """
    path = Path(params.imagenet.source)
    check_readable(path)
    sha256 = verify_archive(path, sha256=params.imagenet.sha256) if path.is_file() else None
    problems: list[Problem] = []
    verified = imagenet.verify_source(
        iter_source_files(
            path, problems if params.skip_corrupt else None, max_bytes=params.max_file_bytes
        ),
        str(path),
        skip_corrupt=params.skip_corrupt,
        workers=params.workers,
        max_pixels=params.max_pixels,
    )
    problems.extend(verified.problems)
    kind = "archive" if path.is_file() else "folder"
    resolved = ResolvedSource(params.imagenet.source, kind, path, sha256)
    with atomic_directory(out_dir, "prepare", force=force) as tmp:
        for split, entries in verified.splits.items():
            imagenet.write_split_tsv(tmp / f"{split}.tsv", entries)
        write_json_atomic(tmp / "classes.json", {"wnids": verified.wnids, "names": verified.names})
        manifest = {
            "dataset": "imagenet",
            "layout": "single-folder" if verified.single_folder else "train-val",
            "source": resolved.describe(),
            "classes": verified.wnids,
            "outputs": describe_outputs(tmp),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    kinds = Counter(f"{e.format}/{e.mode}" for es in verified.splits.values() for e in es)
    report = {
        "dataset": "imagenet",
        "source": resolved.describe(),
        "layout": manifest["layout"],
        "classes": len(verified.wnids),
        "images": {split: len(entries) for split, entries in verified.splits.items()},
        "formats": dict(sorted(kinds.items())),
        "skipped_count": len(problems),
        "skipped": report_problems(problems),
        "ignored": verified.ignored,
    }
    write_json_atomic(report_path, report)
    return report


def prepare(
    dataset: Dataset,
    params: PrepareParams,
    out_dir: Path,
    report_path: Path,
    download_dir: Path,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Run the prepare stage for ``dataset``.

    ``out_dir`` is replaced only if it is missing, empty or a previous prepare output (its
    manifest says so and lists every file in it), or with ``force`` any folder; never a file.
    ``report_path`` is replaced only if it is a previous prepare report, or with ``force``
    (:func:`~resnet_mlops.io.check_output_file`). Both are checked before the source is read.
    """
    check_output_folder(out_dir, "prepare", force=force)
    check_output_file(report_path, "prepare --report", force=force)
    if dataset == "cifar10":
        return prepare_cifar10(params, out_dir, report_path, download_dir, force=force)
    if dataset == "imagenet":
        return prepare_imagenet(params, out_dir, report_path, force=force)
    raise DataError(f"unknown dataset {dataset!r}")
