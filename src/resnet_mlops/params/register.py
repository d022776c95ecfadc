"""The ``register`` section of params.yaml."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from resnet_mlops.params.base import Section


class RegisterParams(Section):
    """The ``register`` section of params.yaml."""

    name: Annotated[str, Field(min_length=1)]  # the registered model; "auto": <dataset>-classifier
    # Percentage points of test top-1 error a challenger must win by; a negative margin would
    # let a worse model replace the champion.
    margin: Annotated[float, Field(ge=0)]
