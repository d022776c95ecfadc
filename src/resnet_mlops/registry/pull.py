"""``resnet pull``: a registered version, its preprocessing description and a model card."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from resnet_mlops.io import OUTPUT_ERRNOS, atomic_directory, check_output_folder
from resnet_mlops.registry.connection import ModelRef, reaching, resolve
from resnet_mlops.serving.package import OUTPUT_DESCRIPTION, PREPROCESSING_FILE

CARD_FILE = "MODEL_CARD.md"


def _geometry(spec: dict[str, Any]) -> str:
    side = spec["crop"]
    if spec["resize_shorter"] == side:
        resize = f"an image that is not {side}x{side}: shorter side to {side}"
    else:
        resize = f"shorter side to {spec['resize_shorter']}"
    shift = "the training set's mean image" if spec.get("mean_image") else "per-channel means"
    return (
        f"RGB; {resize} (bilinear, antialiased), centre {spec['crop']}x{spec['crop']} crop; "
        f"subtract {shift} and divide by the per-channel standard deviations (0..255 units: "
        f"std {', '.join(f'{s:.2f}' for s in spec['std'])})"
    )


def _figure(text: str) -> str:
    """A tag's number as a person reads it (12.26, not 12.260000000000005); other text as is."""
    try:
        return f"{float(text):.4f}".rstrip("0").rstrip(".")
    except ValueError:
        return text


def model_card(version: ModelVersion, aliases: list[str], spec: dict[str, Any], uri: str) -> str:
    """A Markdown description of a registered version, from its tags."""
    tags = dict(version.tags)
    params = json.loads(tags.pop("params", "{}") or "{}")
    ref = f"models:/{version.name}/{version.version}"
    metrics = {k: v for k, v in sorted(tags.items()) if k.startswith("test_") or k == "val_error"}
    lines = [
        f"# {version.name} version {version.version}",
        "",
        f"Aliases: {', '.join(aliases) or 'none'}. Registry: {uri}.",
        f"Training run: {version.run_id}.",
        "",
        f"Decision at registration: {tags.get('registry.decision', 'not recorded')}",
        "",
        "## Model",
        "",
        f"`{tags.get('model', '?')}`, {int(tags.get('parameters', 0)):,} parameters, trained on "
        f"{tags.get('dataset', '?')}.",
        "",
        "## Metrics (percent errors)",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {key} | {_figure(value)} |" for key, value in metrics.items()),
        "",
        "## Data and code",
        "",
        f"- data version (hash of the preprocessed data's manifest): {tags.get('data.version')}",
        f"- DVC hash of the preprocessed data: {tags.get('data.dvc_md5', 'not recorded')}",
        f"- test split {tags.get('data.test_split')}, version {tags.get('data.test_version')}",
        f"- git commit {tags.get('git.commit')} (uncommitted changes: {tags.get('git.dirty')})",
        "",
        "## Input, preprocessing, output",
        "",
        f"- input: {tags.get('input', '')}",
        f"- preprocessing (`{PREPROCESSING_FILE}`): {_geometry(spec)}",
        f"- output: {OUTPUT_DESCRIPTION} ({', '.join(spec['classes'][:10])}"
        f"{', ...' if len(spec['classes']) > 10 else ''})",
        "",
        "## Use",
        "",
        "```bash",
        "resnet predict --model . image.jpg",
        "mlflow models serve -m . --env-manager local --port 5001",
        "```",
        "",
        "```python",
        f'model = mlflow.pyfunc.load_model("{ref}")  # or this folder',
        'probabilities = model.predict(pd.DataFrame({"image": [open("image.jpg", "rb").read()]}))',
        "```",
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(params, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# How MLflow's download reports a failure of one file: "##### File <path> #####" and, on the
# next line, str() of the exception. An OSError's str() starts with "[Errno N] <reason>", then
# ": '<file>'" and, for a copy (a file:// artifact store), " -> '<destination>'"; an HTTP or
# server error never starts so.
_LOCAL_FAILURE = re.compile(
    r"^\[Errno (\d+)\] ([^:\n]+?)(?:: '([^'\n]*)'(?: -> '([^'\n]*)')?)?$", re.MULTILINE
)


def local_write_error(error: MlflowException, folder: Path) -> OSError | None:
    """The local file system error inside an MLflow download failure, if that is what it was.

    MLflow (3.x, ``ArtifactRepository.download_artifacts``) downloads files in a thread pool
    and re-raises every failure as one ``MlflowException`` with the original exceptions
    flattened to text, so a full local disk would read as an unreachable server. Only an
    ``[Errno N]`` line of a write error (:data:`OUTPUT_ERRNOS`) whose file, if named, lies in
    ``folder`` counts.
    """
    for match in _LOCAL_FAILURE.finditer(str(error)):
        code, reason, name = int(match[1]), match[2], match[4] or match[3]
        inside = name is None or Path(name).resolve().is_relative_to(folder.resolve())
        if code in OUTPUT_ERRNOS and inside:
            return OSError(code, reason, name)
    return None


def pull(
    client: MlflowClient, ref: ModelRef, uri: str, out: Path, *, force: bool = False
) -> ModelVersion:
    """Download the version ``ref`` points to into ``out`` (replaced as a whole, atomically): the
    MLflow model, ``preprocessing.json`` beside it and ``MODEL_CARD.md``.

    ``out`` is replaced only if it is missing, empty or an earlier ``pull`` output (the marker
    file ``.resnet-output.json`` lists all it wrote, and nothing was added), or with ``force``
    any folder; never a file. That is checked before anything is downloaded.

    Raises:
        RegistryError: no such model, alias or version, or the server cannot be reached.
        OutputError: ``out`` may not be replaced.
        OSError: writing ``out`` failed (disk full, read-only, no permission): named ``out``.
    """
    check_output_folder(out, "pull", force=force)
    version = resolve(client, ref, uri)
    model_uri = f"models:/{version.name}/{version.version}"
    with reaching(uri):
        aliases = sorted(version.aliases)
        with atomic_directory(out, "pull", force=force, marker={"model": model_uri}) as tmp:
            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=model_uri, dst_path=str(tmp), tracking_uri=uri, registry_uri=uri
                )
            except MlflowException as error:
                local = local_write_error(error, tmp)
                if local is None:
                    raise
                raise local from error  # atomic_directory names it after out
            shutil.copyfile(tmp / "artifacts" / PREPROCESSING_FILE, tmp / PREPROCESSING_FILE)
            spec = json.loads((tmp / PREPROCESSING_FILE).read_text())
            (tmp / CARD_FILE).write_text(model_card(version, aliases, spec, uri))
    return version
