"""The resume key: what a checkpoint was trained with, stored inside it.

``--auto-resume`` (what ``dvc repro`` runs) continues a checkpoint only when its key equals
the current one. The key travels in the checkpoint, not beside it: ``dvc checkout`` of an
older checkpoint brings that checkpoint's own key along, and a file next to it (neither git
nor DVC tracked the old ``models/resume_key.json``) could describe another run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import resnet_mlops
from resnet_mlops.data.loaders import LoaderParams
from resnet_mlops.params.base import to_dict
from resnet_mlops.params.train import TrainParams

# The train stage's code deps, relative to the package: mirrors the src/ entries of the train
# stage's `deps` in dvc.yaml (tests/integration/test_train_resume.py checks it). Code DVC does
# not rerun the stage for (the report, the registry, the CLI) does not void a checkpoint either.
# Not read from dvc.yaml at run time: the installed package has no dvc.yaml.
TRAIN_CODE = (
    "__init__.py",
    "errors.py",
    "io.py",
    "journal.py",
    "lineage.py",
    "mlflow_store.py",
    "project.py",
    "params",
    "models/__init__.py",
    "models/catalog.py",
    "models/complexity.py",
    "models/resnet.py",
    "data/__init__.py",
    "data/loaders",
    "engine",
    "train",
    "serving",
    "tracking",
    "stages/__init__.py",
    "stages/train.py",
)


def code_version(package: Path | None = None) -> str:
    """A hash of the ``.py`` files of :data:`TRAIN_CODE` (names and contents)."""
    package = package or Path(resnet_mlops.__file__).parent
    digest = hashlib.sha256()
    for part in TRAIN_CODE:
        root = package / part
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            name = path.relative_to(package).as_posix()
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def data_version(data_dir: Path) -> str:
    """A short content hash of the preprocessed data: its manifest lists every file's SHA-256."""
    manifest = data_dir / "manifest.json"
    if not manifest.exists():
        return "unknown"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def resume_key(
    dataset: str, train_params: TrainParams, loader_params: LoaderParams, version: str
) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed by ``--auto-resume``."""
    key = {
        "dataset": dataset,
        "train": to_dict(train_params),
        "loader": to_dict(loader_params),
        "data_version": version,
        "code_version": code_version(),
    }
    return json.loads(json.dumps(key))  # plain lists and dicts, as a checkpoint stores them


def mismatch(stored: Any, key: dict[str, Any]) -> str | None:
    """Why a checkpoint's stored key does not allow an automatic resume; None if it does."""
    if stored is None:
        return "it records no resume key (an older version, or a resumed mix of two configs)"
    if not isinstance(stored, dict):
        return "its resume key is not readable"
    differ = [part for part in key if stored.get(part) != key[part]]
    if not differ:
        return None
    if "train" in differ:
        old, new = stored.get("train") or {}, key["train"]
        fields = sorted(k for k in new if old.get(k) != new[k])
        differ[differ.index("train")] = "train params (" + ", ".join(fields) + ")"
    return "written with other " + ", ".join(d.replace("_", " ") for d in differ)
