"""Each kind of bad input: one line naming the file, a non-zero exit, nothing half-written."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from resnet_mlops.data.prepare import prepare
from resnet_mlops.errors import DataError
from tests.support.archives import tar_folder, write_class_folders
from tests.support.project import PARAMS, prepare_params


def run_prepare(tmp: Path, source: Path, *overrides: str) -> dict:
    params = prepare_params(f"prepare.cifar10.source={source}", *overrides)
    return prepare("cifar10", params, tmp / "out", tmp / "report.json", tmp / "downloads")


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("."))


@pytest.fixture
def tree(tmp_path: Path, cifar_jpegs) -> Path:
    return write_class_folders(tmp_path / "tree", cifar_jpegs)


def test_truncated_jpeg_fails_naming_the_file(tmp_path: Path, tree: Path) -> None:
    victim = tree / "train" / "cat" / "0001.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train/cat/0001.jpg: truncated or corrupt image"):
        run_prepare(tmp_path, tree)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_skip_corrupt_skips_and_lists_the_file(tmp_path: Path, tree: Path) -> None:
    victim = tree / "train" / "cat" / "0001.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    report = run_prepare(tmp_path, tree, "prepare.skip_corrupt=true")
    assert report["images"] == {"train": 39, "test": 20}
    assert report["skipped_count"] == 1
    assert report["skipped"][0]["file"].endswith("train/cat/0001.jpg")
    assert "truncated" in report["skipped"][0]["reason"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["skipped"] == report["skipped"]


def test_non_image_file_fails(tmp_path: Path, tree: Path) -> None:
    (tree / "test" / "dog" / "notes.jpg").write_text("not a picture")
    with pytest.raises(DataError, match=r"test/dog/notes.jpg: not an image"):
        run_prepare(tmp_path, tree)


def test_empty_class_folder_fails(tmp_path: Path, tree: Path) -> None:
    for path in (tree / "test" / "bird").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"test/bird: class folder has no images"):
        run_prepare(tmp_path, tree, "prepare.skip_corrupt=true")


def test_class_missing_from_one_split_fails(tmp_path: Path, tree: Path) -> None:
    shutil.rmtree(tree / "test" / "bird")
    with pytest.raises(DataError, match=r"class 'bird' is in train but not in test"):
        run_prepare(tmp_path, tree)


def test_wrong_checksum_fails(tmp_path: Path, tree: Path) -> None:
    archive = tar_folder(tree, tmp_path / "cifar.tar.gz")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  cifar.tar.gz\n")
    with pytest.raises(DataError, match=r"cifar.tar.gz: sha256 mismatch \(expected 0{64}, got"):
        run_prepare(tmp_path, archive)
    right = hashlib.sha256(archive.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{right}  cifar.tar.gz\n")
    assert run_prepare(tmp_path, archive)["source"]["sha256"] == right


def test_missing_source_fails(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.tar.gz: no such file or folder"):
        run_prepare(tmp_path, tmp_path / "nowhere.tar.gz")


def test_unreadable_source_fails(tmp_path: Path) -> None:
    # Root (CI) reads any file whatever its mode, so "unreadable" here means unreadable as
    # data: a corrupt archive, and a file that is no archive at all.
    garbage = tmp_path / "cifar.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataError, match=r"cifar.tar.gz: (not a readable tar|truncated or corrupt)"):
        run_prepare(tmp_path, garbage)
    text = tmp_path / "cifar.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"cifar.txt: expected a folder or a tar archive"):
        run_prepare(tmp_path, text)


def _tar_with_escaping_member(tree: Path, archive: Path) -> Path:
    tar_folder(tree, archive.with_suffix(".tmp"))
    with tarfile.open(archive.with_suffix(".tmp")) as src, tarfile.open(archive, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("../evil.jpg")
        payload = b"x" * 10
        info.size = len(payload)
        dst.addfile(info, io.BytesIO(payload))
    return archive


def test_tar_member_escaping_the_root_fails(tmp_path: Path, tree: Path) -> None:
    archive = _tar_with_escaping_member(tree, tmp_path / "evil.tar")
    with pytest.raises(DataError, match=r"evil.tar: member '../evil.jpg' escapes the archive root"):
        run_prepare(tmp_path, archive)
    assert not (tmp_path.parent / "evil.jpg").exists()
    report = run_prepare(tmp_path, archive, "prepare.skip_corrupt=true")
    assert report["skipped"][0]["reason"] == "member '../evil.jpg' escapes the archive root"


@pytest.mark.slow  # runs the console script (several seconds)
def test_cli_reports_one_line_and_keeps_the_previous_output(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    command = [
        "resnet",
        "prepare",
        "--params",
        str(PARAMS),
        "--out",
        str(out),
        "--report",
        str(tmp_path / "report.json"),
        f"prepare.cifar10.source={tree}",
    ]
    subprocess.run(command, check=True, capture_output=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    victim = tree / "train" / "cat" / "0001.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tree}:train/cat/0001.jpg: truncated or corrupt image")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # two CLI runs; tests/unit/test_params.py checks the same messages in process
def test_bad_params_key_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    result = subprocess.run(
        ["resnet", "prepare", "--params", str(PARAMS), "prepare.sorce=x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {PARAMS}: override 'prepare.sorce=x': unknown key prepare.sorce"
    )
    bad = tmp_path / "params.yaml"
    head, section, rest = PARAMS.read_text().partition("\nprepare:\n")
    bad.write_text(head + section + rest.replace("workers: 0", "workers: many", 1))
    result = subprocess.run(
        ["resnet", "prepare", "--params", str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {bad}: prepare.workers: expected an integer, got 'many'"
    )
