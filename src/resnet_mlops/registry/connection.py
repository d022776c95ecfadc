"""The Model Registry's address, ``models:/`` URIs, and one-line errors for what users get wrong."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from resnet_mlops.tracking.connection import short_http_limits
from resnet_mlops.tracking.uploader import describe, is_permanent

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(Exception):
    """A registry problem a user can fix; the message is one line naming the model or server."""


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
