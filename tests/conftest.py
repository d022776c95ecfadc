"""Fixtures every tier shares (the real params.yaml, the team's real data, small real fixtures,
a throwaway MLflow store), and the tier markers: a test's folder under tests/ is its marker
(``unit``, ``integration`` or ``e2e``), so ``pytest -m unit`` runs that tier wherever it lives.
The helpers tests import are in ``tests/support``."""

from __future__ import annotations

import functools
import http.server
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.archives import write_class_folders
from tests.support.project import CIFAR_MIRROR, PARAMS

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it lives in (tests/<tier>/...)."""
    root = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(root).parts
        if parts[0] in TIERS:
            item.add_marker(parts[0])


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
