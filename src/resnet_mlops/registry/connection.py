"""The Model Registry's address, ``models:/`` URIs, and one-line errors for what users get wrong."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from resnet_mlops.errors import UserError
from resnet_mlops.mlflow_store import (
    SQLITE_FILE,
    default_tracking_uri,
    describe,
    is_permanent,
    short_http_limits,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(UserError):
    """A registry problem a user can fix; the message is one line naming the model or server."""


def existing_registry_uri(cwd: Path) -> str:
    """The registry a reading command (``pull``, ``predict models:/...``) uses; never creates one.

    ``MLFLOW_TRACKING_URI`` if set; else the project's embedded store (``<project>/mlflow.db``),
    but only if it exists. MLflow's client would create an empty SQLite database on first use, so
    ``resnet pull`` run in any folder would leave an ``mlflow.db`` there and then report an
    empty registry.

    Args:
        cwd: The folder the command runs in (a project, or a DVC experiment's copy of one).

    Raises:
        RegistryError: no variable and no database; the message says how to configure one.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    uri = default_tracking_uri(cwd)
    database = Path(uri.removeprefix("sqlite:///"))
    if database.is_file():
        return uri
    raise RegistryError(
        f"no MLflow tracking server or registry is configured: MLFLOW_TRACKING_URI is not set and "
        f"there is no {database}; set MLFLOW_TRACKING_URI=http://<host>:<port> (or "
        f"sqlite:///<path>/{SQLITE_FILE}), or run `dvc repro` in the project to create its registry"
    )


@contextlib.contextmanager
def reaching(uri: str) -> Iterator[None]:
    """Turn an unreachable server into a one-line :class:`RegistryError`.

    MLflow's client would retry for minutes; one short attempt per request is made instead.
    """
    with short_http_limits():
        try:
            yield
        except MlflowException as error:
            if is_permanent(error):  # the server answered: not found, bad request, ...
                raise
            raise RegistryError(
                f"MLflow tracking at {uri} is unavailable: {describe(error)}"
            ) from None


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        suffix = f"@{self.alias}" if self.alias else f"/{self.version}" if self.version else ""
        return f"models:/{self.name}{suffix}"


def parse_model_uri(text: str) -> ModelRef:
    """Parse a registry URI.

    Raises:
        RegistryError: not ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
    """
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/(\d+))", text)
    if not match:
        raise RegistryError(f"{text!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return ModelRef(match[1], match[2], match[3])


def resolve(client: MlflowClient, ref: ModelRef, uri: str) -> ModelVersion:
    """The version a reference points to now.

    Raises:
        RegistryError: no such registered model, alias or version (the known ones are listed),
            or the server cannot be reached.
    """
    with reaching(uri):
        try:
            model = client.get_registered_model(ref.name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = sorted(m.name for m in client.search_registered_models(max_results=50))
            raise RegistryError(
                f"no registered model {ref.name!r} at {uri} (known: {', '.join(known) or 'none'})"
            ) from None
        if ref.alias is not None:
            if ref.alias not in model.aliases:
                aliases = ", ".join(sorted(model.aliases)) or "none"
                raise RegistryError(
                    f"registered model {ref.name!r} has no alias {ref.alias!r} (aliases: {aliases})"
                )
            return client.get_model_version(ref.name, model.aliases[ref.alias])
        try:
            return client.get_model_version(ref.name, str(ref.version))
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(
                f"registered model {ref.name!r} has no version {ref.version}"
            ) from None
