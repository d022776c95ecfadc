"""The paper's experiments as override sets of params.yaml (``studies.yaml``).

A study is a list of models run under the same overrides, optionally once per variant (the
shortcut options). Each run is a list of ``key=value`` overrides, the same thing for
``resnet train``, ``dvc exp run -S`` and the Prefect grid flow (``models`` + ``overrides``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_mlops.models import MODELS
from resnet_mlops.params import check_pipeline, load_params
from resnet_mlops.params.base import ConfigError, Section, StrTuple, from_dict, read_yaml


class StudySpec(Section):
    """One entry of ``studies:`` as written in the file."""

    about: str
    recipe: str
    grid: str
    models: StrTuple
    optional_models: StrTuple = ()
    overrides: StrTuple = ()
    variants: dict[str, StrTuple] = {}  # pydantic copies a mutable default


class StudiesFile(Section):
    """The whole file: named recipes (override lists) and studies."""

    recipes: dict[str, StrTuple]
    studies: dict[str, StudySpec]


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study: a name and its overrides (``train.model`` included)."""

    name: str
    model: str
    variant: str | None
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A study with its recipe resolved."""

    name: str
    about: str
    grid: str
    models: tuple[str, ...]
    optional_models: tuple[str, ...]
    overrides: tuple[str, ...]  # the recipe's, then the study's
    variants: dict[str, tuple[str, ...]]

    def grid_calls(self, *, include_optional: bool = False) -> list[dict[str, Any]]:
        """Keyword arguments for the Prefect grid flow, one call per variant."""
        models = [*self.models, *(self.optional_models if include_optional else ())]
        variants = self.variants or {None: ()}
        return [
            {"grid": self.grid, "models": models, "overrides": [*self.overrides, *extra]}
            for extra in variants.values()
        ]

    def runs(self, *, include_optional: bool = False) -> list[StudyRun]:
        """Every training run, models within variants."""
        runs = []
        variants: dict[str | None, tuple[str, ...]] = dict(self.variants) or {None: ()}
        for variant, extra in variants.items():
            for model in [*self.models, *(self.optional_models if include_optional else ())]:
                name = f"{self.name}-{model}" + (f"-{variant}" if variant else "")
                overrides = (*self.overrides, *extra, f"train.model={model}")
                runs.append(StudyRun(name, model, variant, overrides))
        return runs


def load_studies(path: Path) -> dict[str, Study]:
    """Read and resolve ``studies.yaml``.

    Raises:
        ConfigError: the file is missing or malformed, or a study names an unknown recipe.
    """
    try:
        spec = from_dict(StudiesFile, read_yaml(path))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(f"{path}:") else f"{path}: {message}"
        ) from None
    studies = {}
    for name, study in spec.studies.items():
        if study.recipe not in spec.recipes:
            raise ConfigError(
                f"{path}: studies.{name}.recipe: unknown recipe {study.recipe!r} "
                f"(known: {', '.join(spec.recipes)})"
            )
        studies[name] = Study(
            name=name,
            about=" ".join(study.about.split()),
            grid=study.grid,
            models=study.models,
            optional_models=study.optional_models,
            overrides=(*spec.recipes[study.recipe], *study.overrides),
            variants=study.variants,
        )
    return studies


def validate_study(study: Study, params: Path) -> None:
    """Check every run of ``study`` (optional models too) against ``params`` with the one
    params model, so a queued experiment cannot fail on its config hours later.

    Raises:
        ConfigError: an override names no key, a value has the wrong type, or a model is
            unknown; the message names the study and the run.
    """
    for run in study.runs(include_optional=True):
        if run.model not in MODELS:
            raise ConfigError(f"study {study.name}: unknown model {run.model!r}")
        try:
            check_pipeline(load_params(params, run.overrides)[0], params)
        except ConfigError as error:
            raise ConfigError(f"study {study.name}, run {run.name}: {error}") from None


def dvc_commands(study: Study, *, include_optional: bool = False) -> list[str]:
    """The study as shell lines: one ``dvc exp run --queue`` per run, then the queue start.

    The grid tag reaches ``resnet train`` through ``RESNET_RUN_TAGS`` in the environment of
    the queue's worker, which ``dvc queue start`` spawns from this shell.
    """
    lines = []
    for run in study.runs(include_optional=include_optional):
        sets = " ".join(f"-S {shlex.quote(o)}" for o in run.overrides)
        lines.append(f"dvc exp run --queue -n {run.name} {sets}")
    tags = shlex.quote(json.dumps({"grid": study.grid}))
    lines.append(f"RESNET_RUN_TAGS={tags} dvc queue start -j 1")
    return lines


def flow_commands(study: Study, *, include_optional: bool = False) -> list[str]:
    """The study as ``python -m pipelines.grid`` lines (the Prefect grid flow)."""
    lines = []
    for call in study.grid_calls(include_optional=include_optional):
        overrides = " ".join(f"--override {shlex.quote(o)}" for o in call["overrides"])
        models = " ".join(call["models"])
        lines.append(
            f"python -m pipelines.grid --grid {call['grid']} --models {models} {overrides}"
        )
    return lines
