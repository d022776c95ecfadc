"""ImageNet-layout data: verify the source, then pack it into shards DALI reads directly."""

from __future__ import annotations

import collections
import hashlib
import io
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet_mlops.data.images import (
    DEFAULT_MAX_PIXELS,
    BadImage,
    inspect_image,
    needs_reencoding,
    reencode_jpeg,
)
from resnet_mlops.data.parallel import ReadAhead, ordered_map
from resnet_mlops.data.sources import Problem
from resnet_mlops.errors import DataError
from resnet_mlops.params.preprocess import ImagenetPreprocess

SPLITS = ("train", "val")
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")
# Files named <wnid>_<readable name>.JPEG (the sample) carry a name; <wnid>_<number> do not.
NAMED_FILE = re.compile(r"^(?P<wnid>[^_]+)_(?P<name>.*[^\d].*)$")


@dataclass(frozen=True)
class Entry:
    """One verified image of the source."""

    file: str
    split: str
    label: int
    bytes: int
    sha256: str
    format: str
    mode: str
    width: int
    height: int

    def tsv(self) -> str:
        return "\t".join(
            str(v)
            for v in (
                self.file,
                self.label,
                self.bytes,
                self.sha256,
                self.format,
                self.mode,
                self.width,
                self.height,
            )
        )


TSV_HEADER = "file\tlabel\tbytes\tsha256\tformat\tmode\twidth\theight"


def classify(name: str) -> tuple[str | None, str, str] | None:
    """``[root/]train/<wnid>/<f>`` -> ``("train", wnid, f)``; ``[root/]<wnid>/<f>`` ->
    ``(None, wnid, f)``; None for anything else (hidden files, files at the top)."""
    parts = name.split("/")
    if len(parts) < 2 or parts[-1].startswith(".") or parts[-2].startswith("."):
        return None
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2], parts[-1]
    return None, parts[-2], parts[-1]


@dataclass(frozen=True)
class _Inspect:
    """Hash and decode one file (a picklable callable, for the worker processes)."""

    max_pixels: int

    def __call__(self, item: tuple[str, bytes]) -> tuple[int, str, object]:
        _, data = item
        digest = hashlib.sha256(data).hexdigest()
        try:
            return len(data), digest, inspect_image(data, self.max_pixels)
        except BadImage as error:
            return len(data), digest, str(error)


def _payload_bytes(item: tuple[object, bytes, *tuple[object, ...]]) -> int:
    """The size of a ``(name, bytes, ...)`` item, for ordered_map's read-ahead budget."""
    return len(item[1])


# JPEGs are large next to CIFAR's 3 kB images: small chunks, and a read-ahead bounded in bytes.
READ_AHEAD = ReadAhead(chunksize=16, weight=_payload_bytes)


@dataclass
class Verified:
    """The verified source: entries per split, classes, names and what was set aside."""

    splits: dict[str, list[Entry]]
    wnids: list[str]
    names: list[str]
    single_folder: bool
    problems: list[Problem]
    ignored: list[str]


@dataclass
class _Listing:
    """What the walk over a source saw besides the image bytes: folders, class names, images."""

    folders: dict[str | None, set[str]] = field(default_factory=dict)
    synsets: dict[str, str] = field(default_factory=dict)
    file_names: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    items: list[tuple[str, str | None, str]] = field(default_factory=list)

    def images(self, entries: Iterable[tuple[str, bytes | None]]) -> Iterator[tuple[str, bytes]]:
        """The images of ``entries``, noting folders, synset files and the rest on the way."""
        for name, data in entries:
            if data is None:
                parts = name.rstrip("/").split("/")
                if len(parts) >= 2 and parts[-2] in SPLITS:
                    self.folders.setdefault(parts[-2], set()).add(parts[-1])
                continue
            if name.rsplit("/", 1)[-1] in SYNSET_FILES:
                for line in data.decode("utf-8", "replace").splitlines():
                    wnid, _, words = line.strip().partition(" ")
                    if wnid:
                        self.synsets[wnid] = words.split(",")[0].strip()
                continue
            parsed = classify(name)
            if parsed is None:
                self.ignored.append(name)
                continue
            split, wnid, filename = parsed
            self.folders.setdefault(split, set()).add(wnid)
            self.items.append((name, split, wnid))
            stem = filename.rsplit(".", 1)[0]
            if (match := NAMED_FILE.match(stem)) and match["wnid"] == wnid:
                self.file_names.setdefault(wnid, match["name"].replace("_", " "))
            yield name, data

    def layout(self, origin: str) -> tuple[bool, list[str | None], list[str]]:
        """Whether the classes sit at the top, the splits, and the classes every split has.

        Raises:
            DataError: no images, mixed layouts, or a class missing from a split.
        """
        if not self.items:
            raise DataError(f"{origin}: no images in class folders found")
        layouts = {split is None for _, split, _ in self.items}
        if len(layouts) > 1:
            raise DataError(
                f"{origin}: mixes class folders at the top with train/ and val/ folders"
            )
        single = layouts == {True}
        split_names = [None] if single else [s for s in SPLITS if s in self.folders]
        class_sets = {split: self.folders.get(split, set()) for split in split_names}
        for split in split_names[1:]:
            for a, b in ((split_names[0], split), (split, split_names[0])):
                missing = sorted(class_sets[a] - class_sets[b])
                if missing:
                    raise DataError(f"{origin}: class '{missing[0]}' is in {a} but not in {b}")
        return single, split_names, sorted(class_sets[split_names[0]])


def verify_source(
    entries: object,
    origin: str,
    *,
    skip_corrupt: bool,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Verified:
    """Decode every image of an ImageNet-layout source and check its structure.

    ``entries`` yields ``(name, bytes)`` for files and ``(name, None)`` for folders. Images
    over ``max_pixels`` are refused (or skipped) from their header, before decoding.
    """
    listing = _Listing()
    results = list(
        ordered_map(
            _Inspect(max_pixels),
            listing.images(entries),  # type: ignore[arg-type]
            workers=workers,
            description="verify images",
            read_ahead=READ_AHEAD,
        )
    )
    single, split_names, wnids = listing.layout(origin)
    label_of = {wnid: index for index, wnid in enumerate(wnids)}
    splits: dict[str, list[Entry]] = {("train" if s is None else s): [] for s in split_names}
    problems: list[Problem] = []
    for (name, split, wnid), (size, digest, info) in zip(listing.items, results, strict=True):
        if isinstance(info, str):
            if not skip_corrupt:
                raise DataError(f"{origin}:{name}: {info}")
            problems.append(Problem(f"{origin}:{name}", info))
            continue
        splits["train" if split is None else split].append(
            Entry(
                name,
                "train" if split is None else split,
                label_of[wnid],
                size,
                digest,
                info.format,
                info.mode,
                info.width,
                info.height,
            )  # type: ignore[attr-defined]
        )
    for split, split_entries in splits.items():
        counts = Counter(e.label for e in split_entries)
        for wnid in wnids:
            if counts[label_of[wnid]] == 0:
                folder = wnid if single else f"{split}/{wnid}"
                raise DataError(f"{origin}:{folder}: class folder has no images")
        split_entries.sort(key=lambda e: e.file)
    names = [listing.synsets.get(w) or listing.file_names.get(w) or w for w in wnids]
    return Verified(splits, wnids, names, single, problems, listing.ignored)


def write_split_tsv(path: Path, entries: list[Entry]) -> None:
    """The file list of one split: name, label, size, sha256 and what the image is."""
    path.write_text("\n".join([TSV_HEADER, *(e.tsv() for e in entries)]) + "\n")


def read_split_tsv(path: Path) -> list[Entry]:
    """Read a file list written by :func:`write_split_tsv`."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (run the prepare stage first)") from None
    if not lines or lines[0] != TSV_HEADER:
        raise DataError(f"{path}: not a prepare file list (bad header)")
    split = path.stem
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise DataError(f"{path}:{number}: expected 8 tab-separated fields")
        file, label, size, digest, fmt, mode, width, height = fields
        entries.append(
            Entry(file, split, int(label), int(size), digest, fmt, mode, int(width), int(height))
        )
    return entries


@dataclass(frozen=True)
class _Convert:
    max_side: int
    quality: int

    def __call__(self, item: tuple[str, bytes, Entry]) -> tuple[bytes, bool] | str:
        name, data, entry = item
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            return f"{name}: changed since the prepare stage (sha256 differs)"
        # The bytes are those the prepare stage decoded and measured: no more pixels than it
        # recorded may be decoded now, whatever Pillow's default limit.
        pixels = max(1, entry.width * entry.height)
        try:
            info = inspect_image(data, pixels)
            if needs_reencoding(info, self.max_side):
                return reencode_jpeg(data, self.max_side, self.quality, pixels), True
        except BadImage as error:
            return f"{name}: {error}"
        return data, False


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: equal inputs give byte-identical shards, so DVC's cache hits.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(tar_path: Path, idx_path: Path, samples: list[tuple[str, bytes, int]]) -> None:
    """Write one webdataset shard (``key.jpg``, ``key.cls``) and its DALI index (v1.2)."""
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, jpeg, label in samples:
            for suffix, payload in (("jpg", jpeg), ("cls", str(label).encode())):
                tar.addfile(_tarinfo(f"{key}.{suffix}", len(payload)), io.BytesIO(payload))
    lines = [f"v1.2 {len(samples)}"]
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    for jpg, cls in zip(members[::2], members[1::2], strict=True):
        components = (("jpg", jpg), ("cls", cls))
        lines.append(" ".join(f"{e} {m.offset_data} {m.size} {m.name}" for e, m in components))
    idx_path.write_text("\n".join(lines) + "\n")


# One split's staging file and, per sample, its (offset, size, label) in it.
_Staged = tuple[io.BufferedRandom, list[tuple[int, int, int]]]


def pack_shards(
    entries_by_file: dict[str, Entry],
    source_files: object,
    out_dir: Path,
    settings: ImagenetPreprocess,
    *,
    workers: int,
    skip_corrupt: bool,
    problems: list[Problem] | None = None,
) -> tuple[dict[str, dict[str, object]], Counter[str], list[Problem]]:
    """Stream the source once into per-split staging files, then write shuffled shards.

    Training shards are written in a seeded random order, so that a reader's shuffle buffer
    sees every class rather than one folder at a time; validation keeps the file order.
    ``problems`` may already hold (or be filled by ``source_files`` with) the files the source
    reader refused; they count as skipped, not as missing.

    Args:
        entries_by_file: the prepare stage's verified images, by file name.
        source_files: ``(name, bytes)`` pairs of the source (``bytes`` is None for a skip).
        out_dir: where the shards and their DALI indexes go.
        settings: samples per shard, re-encoding (``max_side``, ``quality``) and the seed of
            the training order.
        workers: processes that check and re-encode images.
        skip_corrupt: record an unreadable or changed image as a problem instead of failing.
        problems: the list to extend with the skipped files.

    Raises:
        DataError: an image is unreadable or changed (unless ``skip_corrupt``), or files of
            the prepare file list are no longer in the source.
    """
    problems = [] if problems is None else problems
    staging, stats = _stage(
        entries_by_file, source_files, out_dir, settings, workers, skip_corrupt, problems
    )
    missing = len(entries_by_file) - sum(len(o) for _, o in staging.values()) - len(problems)
    if missing:
        raise DataError(f"{missing} files of the prepare file list are no longer in the source")
    index: dict[str, dict[str, object]] = {}
    for split, staged in sorted(staging.items()):
        index[split] = _write_split(split, staged, out_dir, settings)
        staged[0].close()
        (out_dir / f".{split}.staging").unlink()
    return index, stats, problems


def _stage(
    entries_by_file: dict[str, Entry],
    source_files: object,
    out_dir: Path,
    settings: ImagenetPreprocess,
    workers: int,
    skip_corrupt: bool,
    problems: list[Problem],
) -> tuple[dict[str, _Staged], Counter[str]]:
    """Check (and where needed re-encode) each wanted image, appending it to its split's
    staging file in ``out_dir``; a refused one goes to ``problems`` when ``skip_corrupt``."""
    staging: dict[str, _Staged] = {}
    stats: Counter[str] = Counter()

    def wanted():
        for name, data in source_files:  # type: ignore[attr-defined]
            if data is not None and name in entries_by_file:
                yield name, data, entries_by_file[name]

    names_seen: collections.deque[str] = collections.deque()
    stream = ordered_map(
        _Convert(settings.max_side, settings.quality),
        _tap(wanted(), names_seen),
        workers=workers,
        description="pack shards",
        total=len(entries_by_file),
        read_ahead=READ_AHEAD,
    )
    for result in stream:
        entry = entries_by_file[names_seen.popleft()]
        if isinstance(result, str):
            if not skip_corrupt:
                raise DataError(result)
            problems.append(Problem(entry.file, result.split(": ", 1)[-1]))
            continue
        data, converted = result
        stats["converted"] += converted
        if entry.split not in staging:
            staging[entry.split] = (open(out_dir / f".{entry.split}.staging", "w+b"), [])  # noqa: SIM115
        handle, offsets = staging[entry.split]
        offsets.append((handle.tell(), len(data), entry.label))
        handle.write(data)
    return staging, stats


def _write_split(
    split: str, staged: _Staged, out_dir: Path, settings: ImagenetPreprocess
) -> dict[str, object]:
    """Write one split's shards from its staging file; the index entry of the split."""
    handle, offsets = staged
    shard_size = settings.shard_size
    order = np.arange(len(offsets))
    if split == "train":
        order = np.random.default_rng(settings.seed).permutation(len(offsets))
    shards, indexes = [], []
    for start in range(0, len(order), shard_size):
        samples = []
        for position, sample in enumerate(order[start : start + shard_size], start=start):
            offset, size, label = offsets[sample]
            handle.seek(offset)
            samples.append((f"{position:08d}", handle.read(size), label))
        name = f"{split}-{start // shard_size:05d}"
        write_shard(out_dir / f"{name}.tar", out_dir / f"{name}.idx", samples)
        shards.append(f"{name}.tar")
        indexes.append(f"{name}.idx")
    return {"shards": shards, "indexes": indexes, "samples": len(offsets)}


def _tap(items, names: collections.deque[str]):
    """Pass items through, remembering each one's name in order (results come back in order)."""
    for item in items:
        names.append(item[0])
        yield item
