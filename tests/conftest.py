"""Shared test helpers: the real params.yaml, the team's real data, small real fixtures."""

from __future__ import annotations

import functools
import http.server
import io
import os
import pickle
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
DATASETS = REPO.parent / "shared" / "datasets"
CIFAR_MIRROR = DATASETS / "cifar10-jpg.tar.gz"
IMAGENET_SAMPLE = DATASETS / "imagenet-sample.tar.gz"
# What a clone holds besides src/: the pipeline, its params and the DVC config with its remote.
PROJECT_FILES = (
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots/offline.html",  # the plots page (plots.html_template)
)


def copy_project(
    repo: Path, files: tuple[str, ...] = PROJECT_FILES, packages: tuple[str, ...] = ()
) -> Path:
    """Copy the pipeline's files and ``src/resnet_mlops`` (the code deps of dvc.yaml; the
    ``resnet`` that runs is the installed one) plus ``packages`` into ``repo``."""
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, repo / name)
    for package in ("src/resnet_mlops", *packages):
        shutil.copytree(
            REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return repo


@pytest.fixture(scope="session")
def cifar_jpegs() -> dict[str, dict[str, list[bytes]]]:
    """A few real JPEGs per class and split from the CIFAR-10 mirror: {split: {class: [..]}}."""
    wanted = {"train": 4, "test": 2}
    found: dict[str, dict[str, list[bytes]]] = {"train": {}, "test": {}}
    with tarfile.open(CIFAR_MIRROR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            split, cls, _ = parts
            bucket = found[split].setdefault(cls, [])
            if len(bucket) < wanted[split]:
                bucket.append(archive.extractfile(member).read())
            if all(len(b) == wanted[s] for s in found for b in found[s].values()) and all(
                len(found[s]) == 10 for s in found
            ):
                break
    return found


def write_class_folders(root: Path, jpegs: dict[str, dict[str, list[bytes]]]) -> Path:
    """Lay out ``root/<split>/<class>/NNNN.jpg``."""
    for split, classes in jpegs.items():
        for cls, images in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for index, data in enumerate(images):
                (folder / f"{index:04d}.jpg").write_bytes(data)
    return root


def tar_folder(folder: Path, archive: Path, arcname_prefix: str = "") -> Path:
    """Pack a folder's contents into a .tar.gz (paths relative to the folder)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(
                path, arcname=arcname_prefix + path.relative_to(folder).as_posix(), recursive=False
            )
    return archive


def official_cifar_archive(path: Path, per_batch: int = 4, seed: int = 0) -> tuple[Path, dict]:
    """A small archive in the official ``cifar-10-python.tar.gz`` format (pickled batches).

    Returns the archive and the arrays it holds: {"train": (images NHWC, labels), "test": ...}.
    """
    rng = np.random.default_rng(seed)
    batches = {}
    arrays: dict[str, list] = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        arrays["test" if name == "test_batch" else "train"].append((images, labels))
    batches["batches.meta"] = {b"label_names": [c.encode() for c in "abcdefghij"]}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    merged = {
        split: (np.concatenate([i for i, _ in parts]), np.concatenate([y for _, y in parts]))
        for split, parts in arrays.items()
    }
    return path, merged


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a temporary folder: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real CIFAR-10 (50 train and 10 test images per class from the mirror), run
    through the real prepare and preprocess stages (100 images held out for validation)."""
    from resnet_mlops.data.prepare import PrepareParams, prepare
    from resnet_mlops.data.preprocess import PreprocessParams, preprocess
    from resnet_mlops.params.base import load_stage_params

    wanted = {"train": 50, "test": 10}
    found: dict[str, dict[str, list[bytes]]] = {"train": {}, "test": {}}
    with tarfile.open(CIFAR_MIRROR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3:
                bucket = found[parts[0]].setdefault(parts[1], [])
                if len(bucket) < wanted[parts[0]]:
                    bucket.append(archive.extractfile(member).read())
    root = tmp_path_factory.mktemp("small_cifar")
    tree = write_class_folders(root / "tree", found)
    _, prep = load_stage_params(
        PARAMS, "prepare", PrepareParams, [f"prepare.cifar10.source={tree}"]
    )
    prepare("cifar10", prep, root / "prepared", root / "prepare.json", root / "dl")
    _, pre = load_stage_params(
        PARAMS, "preprocess", PreprocessParams, ["preprocess.cifar10.val_size=100"]
    )
    preprocess("cifar10", pre, root / "prepared", root / "preprocessed", root / "pre.json")
    return root / "preprocessed"


@pytest.fixture(autouse=True, scope="session")
def _mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs the tests start go to a throwaway SQLite store, never the project's mlflow.db."""
    store = tmp_path_factory.mktemp("mlflow")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
