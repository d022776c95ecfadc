"""prepare + preprocess on CIFAR-10: the full real mirror, the official format, downloads."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from resnet_mlops.data import cifar10
from resnet_mlops.data.cifar10 import CLASSES
from resnet_mlops.data.prepare import prepare
from resnet_mlops.data.preprocess import preprocess
from resnet_mlops.data.sources import MAX_DOWNLOAD_BYTES, download
from resnet_mlops.errors import DataError
from resnet_mlops.params.base import ConfigError
from tests.support.archives import official_cifar_archive, tar_folder, write_class_folders
from tests.support.project import PARAMS, REPO, prepare_params, preprocess_params


def run_stages(tmp: Path, prepare_overrides=(), preprocess_overrides=()) -> tuple[Path, Path]:
    prepared, preprocessed = tmp / "prepared", tmp / "preprocessed"
    prepare(
        "cifar10",
        prepare_params(*prepare_overrides),
        prepared,
        tmp / "prepare.json",
        tmp / "downloads",
    )
    preprocess(
        "cifar10",
        preprocess_params(*preprocess_overrides),
        prepared,
        preprocessed,
        tmp / "preprocess.json",
    )
    return prepared, preprocessed


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_full_mirror_found_by_default_and_split_45k_5k(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the default params find ../shared/datasets from the repo root
    prepared, preprocessed = run_stages(tmp_path)
    report = json.loads((tmp_path / "prepare.json").read_text())
    assert report["source"]["kind"] == "mirror"
    assert report["images"] == {"train": 50_000, "test": 10_000}
    assert report["per_class"]["train"] == dict.fromkeys(CLASSES, 5000)
    assert report["skipped_count"] == 0

    train = np.load(preprocessed / "train_images.npy")
    labels = {s: np.load(preprocessed / f"{s}_labels.npy") for s in ("train", "val", "test")}
    assert train.shape == (45_000, 32, 32, 3) and train.dtype == np.uint8
    assert np.load(preprocessed / "val_images.npy").shape == (5_000, 32, 32, 3)
    assert np.load(preprocessed / "test_images.npy").shape == (10_000, 32, 32, 3)
    assert np.bincount(labels["val"]).tolist() == [500] * 10  # stratified
    assert np.bincount(labels["train"]).tolist() == [4500] * 10
    # Label order is the official one: the mirror's test/airplane images come first.
    assert labels["test"][:1000].tolist() == [0] * 1000
    assert labels["test"][-1000:].tolist() == [9] * 1000

    stats = json.loads((preprocessed / "stats.json").read_text())
    assert stats["classes"] == list(CLASSES)
    assert stats["splits"] == {"train": 45_000, "val": 5_000, "test": 10_000}
    mean_image = np.load(preprocessed / "mean_image.npy")
    assert mean_image.shape == (32, 32, 3) and mean_image.dtype == np.float32
    np.testing.assert_allclose(mean_image.mean(axis=(0, 1)), stats["mean"], rtol=1e-5)
    assert 100 < stats["mean"][0] < 150 and 50 < stats["std"][0] < 80

    # Deterministic: a second preprocess gives byte-identical files.
    before = digests(preprocessed)
    preprocess("cifar10", preprocess_params(), prepared, tmp_path / "again", tmp_path / "r.json")
    assert digests(tmp_path / "again") == before


def test_class_folders_and_tar_of_them_give_identical_arrays(tmp_path: Path, cifar_jpegs) -> None:
    folder = write_class_folders(tmp_path / "tree", cifar_jpegs)
    archive = tar_folder(folder, tmp_path / "tree.tar.gz", arcname_prefix="cifar10/")
    a, _ = run_stages(
        tmp_path / "a", [f"prepare.cifar10.source={folder}"], ["preprocess.cifar10.val_size=10"]
    )
    b, _ = run_stages(
        tmp_path / "b",
        [f"prepare.cifar10.source={archive}", "prepare.workers=1"],
        ["preprocess.cifar10.val_size=10"],
    )
    for name in ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert np.load(a / "train_labels.npy").tolist() == [c for c in range(10) for _ in range(4)]
    val = np.load(tmp_path / "a" / "preprocessed" / "val_labels.npy")
    assert sorted(val.tolist()) == list(range(10))  # one per class


def test_val_size_zero_trains_on_all(tmp_path: Path, cifar_jpegs) -> None:
    folder = write_class_folders(tmp_path / "tree", cifar_jpegs)
    _, out = run_stages(
        tmp_path, [f"prepare.cifar10.source={folder}"], ["preprocess.cifar10.val_size=0"]
    )
    assert not (out / "val_images.npy").exists()
    assert len(np.load(out / "train_labels.npy")) == 40


def test_train_size_keeps_a_stratified_subset(tmp_path: Path, cifar_jpegs) -> None:
    folder = write_class_folders(tmp_path / "tree", cifar_jpegs)
    prepared, out = run_stages(
        tmp_path,
        [f"prepare.cifar10.source={folder}"],
        ["preprocess.cifar10.val_size=10", "preprocess.cifar10.train_size=20"],
    )
    labels = np.load(out / "train_labels.npy")
    assert np.bincount(labels).tolist() == [2] * 10  # 2 of each class's 3 left after val
    assert len(np.load(out / "val_labels.npy")) == 10
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == {"val_size": 10, "seed": 0, "train_size": 20}
    assert json.loads((out / "stats.json").read_text())["splits"]["train"] == 20

    # More than the split leaves: one line naming the prepared folder, the old output kept.
    before = digests(out)
    params = preprocess_params("preprocess.cifar10.val_size=10", "preprocess.cifar10.train_size=31")
    with pytest.raises(DataError, match=rf"{prepared}: train_size 31 asks for more than the 30"):
        preprocess("cifar10", params, prepared, out, tmp_path / "r.json")
    assert digests(out) == before
    with pytest.raises(ConfigError, match="preprocess.cifar10.train_size: .* 0, got -1"):
        preprocess_params("preprocess.cifar10.train_size=-1")


def test_stratified_split_names_the_size_and_the_short_class() -> None:
    labels = np.array([0] * 10 + [1] * 2)  # class 1 has 2 images, its share of 6 is 3
    train, val = cifar10.stratified_split(labels, 4, seed=0)
    assert np.bincount(labels[val]).tolist() == [2, 2] and len(train) == 8
    with pytest.raises(
        DataError, match=r"^data/x: train_size 6 asks for 3 images of class 1, which has 2$"
    ):
        cifar10.stratified_split(labels, 6, seed=0, what="data/x: train_size")


def test_official_archive_downloaded_from_a_local_server(tmp_path: Path, http_root) -> None:
    www, base = http_root
    archive, arrays = official_cifar_archive(www / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    prepared, _ = run_stages(
        tmp_path,
        [
            "prepare.cifar10.source=auto",
            f"prepare.cifar10.mirror={tmp_path}/absent.tar.gz",
            f"prepare.cifar10.url={base}/cifar-10-python.tar.gz",
            f"prepare.cifar10.md5={md5}",
        ],
        ["preprocess.cifar10.val_size=0"],
    )
    report = json.loads((tmp_path / "prepare.json").read_text())
    assert report["source"]["kind"] == "download"
    assert report["layout"] == "official-pickle"
    assert (tmp_path / "downloads" / "cifar-10-python.tar.gz").exists()
    for split in ("train", "test"):
        images, labels = arrays[split]
        np.testing.assert_array_equal(np.load(prepared / f"{split}_images.npy"), images)
        np.testing.assert_array_equal(np.load(prepared / f"{split}_labels.npy"), labels)


def test_official_archive_with_wrong_md5_is_refused(tmp_path: Path) -> None:
    archive, _ = official_cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: md5 mismatch \(expected 0+"):
        run_stages(
            tmp_path, [f"prepare.cifar10.source={archive}", "prepare.cifar10.md5=" + "0" * 32]
        )
    assert not (tmp_path / "prepared").exists()


def test_download_failure_is_one_line_and_leaves_nothing(tmp_path: Path, http_root) -> None:
    _, base = http_root
    with pytest.raises(DataError, match=r"/missing.tar.gz: download failed \(HTTP Error 404"):
        run_stages(tmp_path, [f"prepare.cifar10.source={base}/missing.tar.gz"])
    assert list((tmp_path / "downloads").iterdir()) == []


def test_prepare_in_a_dvc_experiment_copy_finds_relative_sources(tmp_path: Path, cifar_jpegs):
    """Queued and --temp DVC experiments run under <project>/.dvc/tmp/exps/: a source path
    relative to the project (like ../shared/datasets) must still be found from there."""
    project = tmp_path / "project"
    project.mkdir()
    tar_folder(write_class_folders(tmp_path / "folders", cifar_jpegs), project / "src.tar.gz")
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    shutil.copyfile(PARAMS, copy / "params.yaml")
    done = subprocess.run(
        ["resnet", "prepare", "prepare.cifar10.source=auto", "prepare.cifar10.mirror=src.tar.gz"],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((copy / "metrics" / "prepare.json").read_text())
    assert report["source"]["kind"] == "mirror"
    assert report["source"]["path"] == str(project.resolve() / "src.tar.gz")


class _OversizeHandler(http.server.BaseHTTPRequestHandler):
    """``/announced``: a ``Content-Length`` over the real cap (the body never comes);
    ``/unannounced``: 5000 bytes with no length, the end told by closing (HTTP/1.0)."""

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path.startswith("/announced"):
            self.send_header("Content-Length", str(MAX_DOWNLOAD_BYTES + 1))
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
        else:
            self.end_headers()
            self.wfile.write(b"\0" * 5000)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_download_over_the_cap_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OversizeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        # The real cap, through the command: refused from the header, before any byte is kept.
        url = f"{base}/announced/cifar-10-python.tar.gz"
        done = subprocess.run(
            ["resnet", "prepare", "--params", str(PARAMS), "--out", str(tmp_path / "prepared")]
            + ["--report", str(tmp_path / "prepare.json"), "--download-dir", str(tmp_path / "dl")]
            + [f"prepare.cifar10.source={url}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip() == (
            f"error: {url}: {MAX_DOWNLOAD_BYTES + 1} bytes, over the download cap of "
            f"{MAX_DOWNLOAD_BYTES}"
        )
        assert list((tmp_path / "dl").iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dl"]
        # A server that does not say the length: counted as it comes.
        url = f"{base}/unannounced/cifar-10-python.tar.gz"
        with pytest.raises(DataError) as caught:
            download(url, tmp_path / "dl", max_bytes=4096)
        assert str(caught.value) == f"{url}: more than 4096 bytes, over the download cap"
        assert list((tmp_path / "dl").iterdir()) == []
        assert download(url, tmp_path / "dl", max_bytes=5000).stat().st_size == 5000
    finally:
        server.shutdown()
        server.server_close()
