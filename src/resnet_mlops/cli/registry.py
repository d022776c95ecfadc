"""The registry commands of the ``resnet`` CLI: ``register``, ``pull`` and ``predict``.

Added to the main app by :func:`add_commands`; heavy imports wait until a command runs, so that
``resnet --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from resnet_mlops.cli.fail import fail


def _fail(message: str, code: int = 1) -> NoReturn:
    fail(message, code)


def _tracking_uri() -> str:
    from resnet_mlops.mlflow_store import tracking_uri

    # MLflow draws a progress bar per download; a command line wants its one line of result.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return tracking_uri(Path.cwd())


def _registry_uri() -> str:
    """The registry for ``pull``/``predict``: one that exists, else a one-line error (exit 1)."""
    from resnet_mlops.registry.connection import RegistryError, existing_registry_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return existing_registry_uri(Path.cwd())
    except RegistryError as error:
        _fail(str(error))


def _reason(error: Exception) -> str:
    """The first line of an error MLflow raised after the server answered (permissions, ...)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def register_command(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of params.yaml, e.g. register.margin=0.5"),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
    model: Annotated[Path, typer.Option(help="The trained model file.")] = Path("models/model.pt"),
    evaluation: Annotated[Path, typer.Option(help="The evaluate stage's metrics.")] = Path(
        "metrics/evaluate.json"
    ),
    data: Annotated[Path | None, typer.Option(help="Default: data/preprocessed/<dataset>.")] = None,
    out: Annotated[Path, typer.Option(help="The decision, whole.")] = Path("metrics/register.json"),
    headline: Annotated[
        Path | None,
        typer.Option(
            help="Also write promoted and version here (the DVC metrics dvc exp show lists)."
        ),
    ] = None,
) -> None:
    """Register the evaluated model in MLflow as `challenger`; make it `champion` if it wins."""
    from mlflow.exceptions import MlflowException

    from resnet_mlops.stages.register import run_register

    try:
        decision = run_register(params, overrides or [], model, evaluation, data, out, headline)
    except MlflowException as error:
        _fail(f"MLflow refused the registration: {_reason(error)}")
    typer.echo(f"registered: {decision.reason} (decision: {out})")


def pull_command(
    model: Annotated[str, typer.Argument(help="models:/<name>@<alias> or models:/<name>/<n>")],
    out: Annotated[
        Path, typer.Option(help="The folder to write (replaces an earlier pull's output).")
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace --out even if `resnet pull` did not write it (never a file)."
        ),
    ] = False,
) -> None:
    """Download a registered model with its preprocessing description and a model card."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from resnet_mlops.registry.connection import parse_model_uri
    from resnet_mlops.registry.pull import CARD_FILE, pull

    uri = _registry_uri()
    try:
        version = pull(MlflowClient(uri), parse_model_uri(model), uri, out, force=force)
    except MlflowException as error:
        _fail(f"could not download {model}: {_reason(error)}")
    typer.echo(f"pulled {version.name} version {version.version} -> {out} (card: {CARD_FILE})")


def predict_command(
    images: Annotated[list[Path], typer.Argument(help="JPEG or PNG files, any size.")],
    model: Annotated[
        str,
        typer.Option(help="models:/<name>@<alias>, a pulled model folder, or a model.pt file."),
    ],
    top: Annotated[int, typer.Option(min=1, help="How many classes to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the most likely classes of each image, with their probabilities."""
    from mlflow.exceptions import MlflowException

    from resnet_mlops.registry.predict import load_predictor, read_images, top_k

    try:
        encoded = read_images(images)
        # A local folder or model file needs no store: none is looked up (or created) for it.
        uri = _registry_uri() if model.startswith("models:/") else ""
        predictor = load_predictor(model, uri)
    except MlflowException as error:
        _fail(f"could not load {model}: {_reason(error)}")
    probabilities, names = predictor(encoded)
    predictions = top_k(names, probabilities, [str(i) for i in images], top)
    if as_json:
        rows = [
            {"image": p.image, "top": [{"class": c, "probability": v} for c, v in p.top]}
            for p in predictions
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for prediction in predictions:
        typer.echo(prediction.image)
        width = max(len(name) for name, _ in prediction.top)
        for rank, (name, probability) in enumerate(prediction.top, start=1):
            typer.echo(f"  {rank}. {name:<{width}}  {probability:7.2%}")


def add_commands(app: typer.Typer) -> None:
    """Add ``register``, ``pull`` and ``predict`` to the ``resnet`` app."""
    app.command("register")(register_command)
    app.command("pull")(pull_command)
    app.command("predict")(predict_command)
