"""Hostile inputs (issue 17, items 5, 8 and part of 9): decompression bombs, oversize archive
members, symbolic links out of a source folder, every ``sha256sum`` format, and data that does
not fit the model or the params. Each is a one-line error naming the file (or a listed skip),
found from headers before anything large is read or decoded."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader
from resnet_mlops.data.prepare import PrepareParams, prepare
from resnet_mlops.data.preprocess import preprocess
from resnet_mlops.data.sources import verify_archive
from resnet_mlops.engine.artifact import model_kwargs, save_model
from resnet_mlops.errors import DataError
from resnet_mlops.models import build_model
from resnet_mlops.params.base import ConfigError, load_stage_params
from resnet_mlops.registry.connection import RegistryError
from resnet_mlops.registry.predict import read_images
from resnet_mlops.serving.classifier_model import ImageClassifier, ImageScorer
from resnet_mlops.serving.package import preprocessing_spec
from resnet_mlops.stages.evaluate import EvalPaths, EvaluateParams, evaluate
from resnet_mlops.train.trainer import eval_split
from tests.support.archives import write_class_folders
from tests.support.data_fixtures import cifar_images, imagenet_jpegs, write_cifar10_dir
from tests.support.images import black_png
from tests.support.project import PARAMS, prepare_params, preprocess_params

GIB = 2**30


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return black_png(30_000, 30_000)


def test_the_bomb_is_a_real_png() -> None:
    small = black_png(300, 200)
    with Image.open(io.BytesIO(small)) as image:
        assert image.size == (300, 200) and not np.asarray(image).any()


def tar_with_huge_member(tree: Path, archive: Path, name: str, size: int) -> Path:
    """``tree`` as an uncompressed tar, then a member ``name`` of ``size`` zero bytes that
    takes no disk: its data is a hole in a sparse file."""
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False)
        end = tar.offset
    info = tarfile.TarInfo(name)
    info.size = size
    with open(archive, "r+b") as f:
        f.seek(end)
        f.write(info.tobuf(tarfile.GNU_FORMAT))
        f.seek(size + (-size % 512), os.SEEK_CUR)
        f.write(bytes(1024))  # the two zero blocks that end a tar
        f.truncate()
    return archive


@pytest.fixture
def tree(tmp_path: Path, cifar_jpegs) -> Path:
    return write_class_folders(tmp_path / "tree", cifar_jpegs)


def run_prepare(tmp: Path, source: Path, *overrides: str) -> dict:
    params = prepare_params(f"prepare.cifar10.source={source}", "prepare.workers=1", *overrides)
    return prepare("cifar10", params, tmp / "out", tmp / "report.json", tmp / "downloads")


def imagenet_tree(root: Path, count: int = 3) -> Path:
    for wnid, data in imagenet_jpegs(count, grayscale=0):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{wnid}_{len(list(folder.iterdir()))}.JPEG").write_bytes(data)
    return root


def run_imagenet_prepare(tmp: Path, source: Path, *overrides: str) -> dict:
    params = load_stage_params(
        PARAMS,
        "prepare",
        PrepareParams,
        [f"prepare.imagenet.source={source}", "prepare.workers=1", *overrides],
    )[1]
    return prepare("imagenet", params, tmp / "out", tmp / "report.json", tmp / "downloads")


# --- item 5: decompression bombs and size caps --------------------------------------------


def test_cifar_bomb_is_one_line_or_a_listed_skip(tmp_path: Path, tree: Path, bomb: bytes) -> None:
    (tree / "train" / "cat" / "bomb.png").write_bytes(bomb)
    with pytest.raises(DataError, match=r"train/cat/bomb.png: image too large: 30000x30000 pix"):
        run_prepare(tmp_path, tree)
    assert not (tmp_path / "out").exists()
    report = run_prepare(tmp_path, tree, "prepare.skip_corrupt=true")
    assert report["images"] == {"train": 40, "test": 20}
    (skipped,) = report["skipped"]
    assert skipped["file"].endswith("train/cat/bomb.png")
    assert skipped["reason"] == "image too large: 30000x30000 pixels, over the cap of 89478485"


def test_an_image_under_pillows_error_but_over_the_cap_is_not_decoded(
    tmp_path: Path, tree: Path
) -> None:
    # 100 MP: Pillow only warns, and decoded it whole (2 GB of RSS) before finding it is not
    # 32x32; the header says so first.
    (tree / "test" / "dog" / "big.png").write_bytes(black_png(10_000, 10_000))
    with pytest.raises(DataError, match=r"test/dog/big.png: image too large: 10000x10000"):
        run_prepare(tmp_path, tree)


def test_imagenet_bomb_and_the_max_pixels_param(tmp_path: Path, bomb: bytes) -> None:
    source = imagenet_tree(tmp_path / "imagenet")
    wnid = sorted(p.name for p in source.iterdir())[0]
    (source / wnid / "bomb.JPEG").write_bytes(bomb)
    with pytest.raises(DataError, match=rf"{wnid}/bomb.JPEG: image too large: 30000x30000"):
        run_imagenet_prepare(tmp_path, source)
    report = run_imagenet_prepare(tmp_path, source, "prepare.skip_corrupt=true")
    assert report["images"] == {"train": 3} and report["skipped_count"] == 1
    assert report["skipped"][0]["reason"].startswith("image too large: 30000x30000")
    # The cap is a param: a real sample image is over 1000 pixels.
    (source / wnid / "bomb.JPEG").unlink()
    with pytest.raises(DataError, match=r"image too large: \d+x\d+ pixels, over the cap of 1000$"):
        run_imagenet_prepare(tmp_path, source, "prepare.max_pixels=1000")


def test_caps_must_be_positive() -> None:
    with pytest.raises(
        ConfigError, match=r"prepare.max_pixels: input should be greater than or equal to 1, got 0"
    ):
        prepare_params("prepare.max_pixels=0")
    with pytest.raises(
        ConfigError,
        match=r"prepare.max_file_bytes: input should be greater than or equal to 1, got -1",
    ):
        prepare_params("prepare.max_file_bytes=-1")


def test_a_huge_tar_member_is_refused_from_its_header(tmp_path: Path, tree: Path) -> None:
    # 1 GiB, as in the issue, would cost the test 2 x 4 s of hashing the archive (a real
    # checksum check); 256 MiB makes the same point at a quarter of that.
    size = GIB // 4
    archive = tar_with_huge_member(tree, tmp_path / "cifar.tar", "train/cat/huge.jpg", size)
    assert archive.stat().st_size > size and archive.stat().st_blocks * 512 < 64 * 2**20
    with pytest.raises(
        DataError,
        match=rf"cifar.tar: member 'train/cat/huge.jpg' is {size} bytes, over the cap of "
        r"67108864 bytes$",
    ):
        run_prepare(tmp_path, archive)
    report = run_prepare(tmp_path, archive, "prepare.skip_corrupt=true")
    assert report["images"] == {"train": 40, "test": 20}
    assert [s["file"] for s in report["skipped"]] == [f"{archive}:train/cat/huge.jpg"]


def test_max_file_bytes_caps_folder_files_too(tmp_path: Path, tree: Path) -> None:
    big = tree / "train" / "cat" / "0000.jpg"
    size = big.stat().st_size
    # Twice the largest file in the tree passes; a file over the cap is refused, unread.
    largest = max(p.stat().st_size for p in tree.rglob("*.jpg"))
    run_prepare(tmp_path, tree, f"prepare.max_file_bytes={2 * largest}")
    big.write_bytes(big.read_bytes() + bytes(3 * largest))
    with pytest.raises(DataError, match=rf"'train/cat/0000.jpg' is {size + 3 * largest} bytes"):
        run_prepare(tmp_path, tree, f"prepare.max_file_bytes={2 * largest}")


def test_preprocess_reads_no_file_larger_than_prepare_measured(tmp_path: Path) -> None:
    source = imagenet_tree(tmp_path / "imagenet")
    run_imagenet_prepare(tmp_path, source)
    victim = sorted(source.rglob("*.JPEG"))[0]
    victim.write_bytes(victim.read_bytes() + bytes(8 * 2**20))  # grown since prepare
    with pytest.raises(DataError, match=rf"{victim.name}' is \d+ bytes, over the cap of \d+ bytes"):
        preprocess(
            "imagenet", preprocess_params(), tmp_path / "out", tmp_path / "pre", tmp_path / "p.json"
        )
    assert not (tmp_path / "pre").exists()
    skip = preprocess_params("preprocess.skip_corrupt=true")
    report = preprocess("imagenet", skip, tmp_path / "out", tmp_path / "pre", tmp_path / "p.json")
    assert report["samples"]["train"] == 2
    assert [s["file"] for s in report["skipped"]] == [str(victim)]


# --- item 9: folder sources do not follow symbolic links out of the source ----------------


def test_a_symlink_out_of_the_source_folder_is_refused(tmp_path: Path, tree: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((tree / "train" / "dog" / "0000.jpg").read_bytes())
    link = tree / "train" / "cat" / "escape.jpg"
    link.symlink_to(outside)
    with pytest.raises(DataError, match=r"escape.jpg: a symbolic link out of the source folder"):
        run_prepare(tmp_path, tree)
    report = run_prepare(tmp_path, tree, "prepare.skip_corrupt=true")
    assert report["images"] == {"train": 40, "test": 20}
    assert [s["file"] for s in report["skipped"]] == [str(link)]


def test_a_class_folder_linked_from_outside_is_refused(tmp_path: Path, tree: Path) -> None:
    shutil.move(tree / "test" / "bird", tmp_path / "bird")
    (tree / "test" / "bird").symlink_to(tmp_path / "bird", target_is_directory=True)
    with pytest.raises(DataError, match=r"test/bird: a symbolic link out of the source folder"):
        run_prepare(tmp_path, tree)


def test_links_inside_the_source_are_read_and_fifos_passed_over(tmp_path: Path, tree: Path):
    (tree / "train" / "cat" / "0009.jpg").symlink_to(Path("..") / "dog" / "0000.jpg")
    os.mkfifo(tree / "train" / "cat" / "pipe.jpg")

    def hung(*_: object) -> None:
        raise TimeoutError("prepare blocked reading a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        report = run_prepare(tmp_path, tree)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert report["images"] == {"train": 41, "test": 20}


# --- item 8: checksums fail closed, in every format sha256sum writes -----------------------


def _sums(folder: Path, *flags: str, name: str = "cifar.tar.gz") -> bytes:
    return subprocess.run(
        ["sha256sum", *flags, name], cwd=folder, check=True, capture_output=True
    ).stdout


def _wrong(sums: bytes, digest: str) -> bytes:
    flipped = ("1" if digest[0] != "1" else "2") + digest[1:]
    return sums.replace(digest.encode(), flipped.encode())


@pytest.mark.parametrize(
    "name", ["cifar.tar.gz", "we\\ird.tar.gz", "new\nline.tar.gz"], ids=["plain", "bs", "nl"]
)
@pytest.mark.parametrize("flags", [[], ["--binary"], ["--tag"], ["--zero"]], ids=str)
def test_every_sha256sum_format_is_verified(tmp_path: Path, flags: list[str], name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"not really an archive, but hashed like one")
    if "\n" in name and "--zero" in flags:
        pytest.skip("--zero does not escape; a newline cannot be told from a line end there")
    sums = _sums(tmp_path, *flags, name=name)
    if "\\" in name or "\n" in name:
        assert sums.startswith(b"\\") or b"\0" in sums  # the escaped form is what is tested
    end = b"\0" if "--zero" in flags else b"\n"
    (tmp_path / "SHA256SUMS").write_bytes(b"0" * 64 + b"  other.tar.gz" + end + sums)
    digest = verify_archive(archive)
    (tmp_path / "SHA256SUMS").write_bytes(_wrong(sums, digest))
    with pytest.raises(
        DataError, match=rf"sha256 mismatch \(expected [0-9a-f]{{64}}, got {digest}"
    ):
        verify_archive(archive)


@pytest.mark.parametrize(
    "line",
    [
        "{d} cifar.tar.gz",  # one space: sha256sum -c accepts it
        "{d}  ./cifar.tar.gz",
        "{d}  cifar.tar.gz\r",  # written on Windows
        "{D}  cifar.tar.gz",
        "SHA256(cifar.tar.gz)= {d}",  # openssl dgst
    ],
)
def test_other_spellings_of_a_line_are_verified(tmp_path: Path, line: str) -> None:
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"payload")
    digest = verify_archive(archive)
    (tmp_path / "SHA256SUMS").write_text(line.format(d=digest, D=digest.upper()) + "\n")
    assert verify_archive(archive) == digest
    wrong = ("1" if digest[0] != "1" else "2") + digest[1:]
    (tmp_path / "SHA256SUMS").write_text(line.format(d=wrong, D=wrong.upper()) + "\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_archive(archive)


@pytest.mark.parametrize(
    "line",
    [
        "deadbeef  cifar.tar.gz",  # a truncated digest
        "{d}{d}  cifar.tar.gz",  # SHA-512 in a SHA256SUMS
        "MD5 (cifar.tar.gz) = 0123456789abcdef0123456789abcdef",
        "cifar.tar.gz: OK",
        "{d}\tcifar.tar.gz",
    ],
)
def test_a_line_naming_the_archive_that_cannot_be_read_is_an_error(
    tmp_path: Path, line: str
) -> None:
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"payload")
    digest = verify_archive(archive)
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  cifar.tar.gz\n{line.format(d=digest)}\n")
    with pytest.raises(DataError, match=r"SHA256SUMS:2: .*cifar.tar.gz$"):
        verify_archive(archive)


def test_the_sha256_param_and_the_sums_file_are_both_checked(tmp_path: Path) -> None:
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"payload")
    digest = verify_archive(archive)
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  cifar.tar.gz\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_archive(archive, sha256=digest)


# --- item 9: data that does not fit the params or the model --------------------------------


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    train = cifar_images(2, "train")
    test = cifar_images(1, "test")
    return write_cifar10_dir(tmp_path / "cifar", {"train": train, "val": test, "test": test})


def test_missing_val_arrays_are_an_error_not_test_set_validation(cifar_dir: Path) -> None:
    assert eval_split("cifar10", cifar_dir) == "val"
    (cifar_dir / "val_images.npy").unlink()
    (cifar_dir / "val_labels.npy").unlink()
    with pytest.raises(DataError, match=r"val_images.npy: no such file, but .*stats.json lists"):
        eval_split("cifar10", cifar_dir)
    # Without a validation split (val_size 0), training scores itself on the test set.
    stats = json.loads((cifar_dir / "stats.json").read_text())
    del stats["splits"]["val"]
    (cifar_dir / "stats.json").write_text(json.dumps(stats))
    assert eval_split("cifar10", cifar_dir) == "test"


def test_an_empty_training_split_is_one_line(tmp_path: Path, cifar_dir: Path) -> None:
    np.save(cifar_dir / "train_images.npy", np.zeros((0, 32, 32, 3), np.uint8))
    np.save(cifar_dir / "train_labels.npy", np.zeros((0,), np.int64))
    with pytest.raises(DataError, match=r"train_images.npy: no images \(an empty train split\)"):
        build_loader(
            LoaderSpec("cifar10", "train", cifar_dir, 8, params=LoaderParams(backend="torch"))
        )


def test_a_val_size_that_leaves_no_training_images_is_one_line(tmp_path: Path, tree: Path):
    run_prepare(tmp_path, tree)
    pre = preprocess_params("preprocess.cifar10.val_size=40")
    with pytest.raises(DataError, match=r"val_size 40 leaves no training images \(of 40\)"):
        preprocess("cifar10", pre, tmp_path / "out", tmp_path / "pre", tmp_path / "pre.json")
    assert not (tmp_path / "pre").exists()


def test_a_model_with_other_classes_than_the_data_is_one_line(
    tmp_path: Path, cifar_dir: Path
) -> None:
    kwargs = model_kwargs("resnet20", "default", False, 3)
    path = tmp_path / "model.pt"
    save_model(
        path,
        build_model("resnet20", **kwargs),
        name="resnet20",
        kwargs=kwargs,
        preprocessing={"classes": ["a", "b", "c"]},
        provenance={},
        metrics={},
        config={},
    )
    paths = EvalPaths(tmp_path / "e.json", tmp_path / "c.csv", tmp_path / "c.png")
    params = EvaluateParams(split="test", batch_size=8, ten_crop=False, device="cpu")
    with pytest.raises(DataError, match=r"model.pt: the model has 3 classes, .* has 10"):
        evaluate("cifar10", params, LoaderParams(backend="torch"), path, cifar_dir, paths)
    assert not paths.metrics.exists()


# --- item 5: predict and the served model refuse oversize images from the header ------------


def test_predict_refuses_a_bomb_naming_the_file(tmp_path: Path, bomb: bytes) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    # Over twice Pillow's limit, Image.open refuses before the header's size can be read.
    with pytest.raises(RegistryError, match=r"bomb.png: image too large: 900000000 pixels, over"):
        read_images([path])


@pytest.mark.slow  # a fresh Python that imports torch and mlflow: 25 s on busy cores
def test_predict_does_not_decode_an_oversize_image(tmp_path: Path) -> None:
    # 100 MP is under Pillow's error limit: only the header check keeps it from being decoded
    # (0.1 GB as gray, 0.3 GB as RGB, then a copy). Peak RSS is measured in a fresh process.
    path = tmp_path / "big.png"
    path.write_bytes(black_png(10_000, 10_000))
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from resnet_mlops.registry.predict import read_images\n"
        "from resnet_mlops.registry.connection import RegistryError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_images([Path(sys.argv[1])])\n"
        "except RegistryError as error:\n"
        "    print(error)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    message, grown_kib = result.stdout.splitlines()
    assert message.endswith(
        "big.png: image too large: 10000x10000 pixels, over the cap of 89478485"
    )
    assert int(grown_kib) < 32 * 1024, f"peak RSS grew by {int(grown_kib) // 1024} MiB"


def test_the_served_model_names_the_oversize_row(cifar_jpegs, bomb: bytes) -> None:
    spec = preprocessing_spec(
        {
            "dataset": "cifar10",
            "input_size": 32,
            "normalization": "channel",
            "mean": [125.0, 123.0, 114.0],
            "std": [63.0, 62.0, 66.0],
            "classes": [f"c{i}" for i in range(10)],
        }
    )
    model = ImageClassifier()
    model.scorer = ImageScorer(lambda x: x.mean((2, 3)).repeat(1, 4)[:, :10], spec)
    cat = cifar_jpegs["test"]["cat"][0]
    assert model.predict(None, pd.DataFrame({"image": [cat]})).shape == (1, 10)
    with pytest.raises(ValueError, match=r"^row 1: image too large: 900000000 pixels, over the"):
        model.predict(None, pd.DataFrame({"image": [cat, bomb]}))
    # The cap travels with the model: preprocessing.json may set its own.
    model.scorer = ImageScorer(model.scorer.network, {**spec, "max_pixels": 1000})
    with pytest.raises(ValueError, match=r"^row 0: image too large: 32x32 pixels, over the cap"):
        model.predict(None, pd.DataFrame({"image": [cat]}))


@pytest.mark.slow  # the resnet CLI starts torch and mlflow
def test_the_cli_says_one_line(tmp_path: Path, bomb: bytes) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    result = subprocess.run(
        ["resnet", "predict", "--model", str(tmp_path / "none.pt"), str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: image too large: 900000000 pixels, over the cap of 89478485"
    ]


def test_parallel_decoding_reads_ahead_a_bounded_number_of_bytes() -> None:
    from resnet_mlops.data.parallel import ReadAhead, ordered_map

    pulled = []

    def files():
        for index in range(100):
            pulled.append(index)
            yield f"f{index}", bytes(1000)

    read_ahead = ReadAhead(weight=lambda i: len(i[1]), window_weight=5000)
    stream = ordered_map(len, files(), workers=2, description="t", read_ahead=read_ahead)
    assert next(stream) == 2
    # Five items make the budget: the stream read that window, not the default 8192 items.
    assert len(pulled) == 5
    assert sum(1 for _ in stream) == 99 and len(pulled) == 100


def test_a_symlink_loop_in_the_source_is_one_line(tmp_path: Path, tree: Path) -> None:
    loop = tree / "train" / "cat" / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"loop.jpg: a symbolic link that does not resolve"):
        run_prepare(tmp_path, tree)
