"""The champion rule: a new version takes the ``champion`` alias only if it is clearly better.

Test errors are compared only when measured on the same test data (the same
:func:`~resnet_mlops.registry.scoring.split_version`); a champion scored on other test data is
scored again on the challenger's, with its own registered model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from resnet_mlops.registry.scoring import top1_error

ERROR_TAG = "test_top1_error"
TEST_VERSION_TAG = "data.test_version"


@dataclass(frozen=True)
class Standing:
    """A version's test top-1 error (%) and the test data it was measured on."""

    version: str
    test_error: float
    test_version: str


@dataclass(frozen=True)
class Decision:
    """Whether the challenger became champion, and the figures that decided it."""

    promoted: bool
    reason: str
    challenger: Standing
    champion: Standing | None  # the champion before, scored on the challenger's test data
    margin: float
    rescored: bool = False

    def as_metrics(self) -> dict[str, object]:
        """The decision as ``metrics/register.json`` records it."""
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "version": int(self.challenger.version),
            "challenger_test_error": self.challenger.test_error,
            "champion_version": int(self.champion.version) if self.champion else None,
            "champion_test_error": self.champion.test_error if self.champion else None,
            "champion_rescored": self.rescored,
            "margin": self.margin,
            "test_version": self.challenger.test_version,
        }

    @classmethod
    def from_metrics(cls, recorded: dict[str, Any]) -> Decision:
        """The decision :meth:`as_metrics` recorded (a version's ``registry.decision.json``)."""
        challenger = Standing(
            str(recorded["version"]),
            float(recorded["challenger_test_error"]),
            str(recorded["test_version"]),
        )
        champion = None
        if recorded["champion_version"] is not None:
            champion = Standing(
                str(recorded["champion_version"]),
                float(recorded["champion_test_error"]),
                str(recorded["test_version"]),
            )
        return cls(
            bool(recorded["promoted"]),
            str(recorded["reason"]),
            challenger,
            champion,
            float(recorded["margin"]),
            bool(recorded["champion_rescored"]),
        )


def decide(
    challenger: Standing, champion: Standing | None, margin: float, rescored: bool = False
) -> Decision:
    """Promote when there is no champion, or when the challenger's test error is lower than the
    champion's by more than ``margin`` percentage points (a tie keeps the champion).

    Raises:
        ValueError: the two were measured on different test data.
    """
    if champion is None:
        reason = f"v{challenger.version} is the first model: champion"
        return Decision(True, reason, challenger, None, margin, rescored)
    if champion.test_version != challenger.test_version:
        raise ValueError("test errors on different test data are not comparable")
    ours, theirs = challenger.test_error, champion.test_error
    promoted = ours < theirs - margin
    verb = "beats" if promoted else "does not beat"
    outcome = "promoted" if promoted else f"champion stays v{champion.version}"
    reason = (
        f"v{challenger.version} ({ours:.2f}% test error) {verb} champion v{champion.version} "
        f"({theirs:.2f}%) by more than {margin:g} points: {outcome}"
    )
    return Decision(promoted, reason, challenger, champion, margin, rescored)


def recorded_standing(version: ModelVersion) -> Standing | None:
    """A version's figure as its tags record it; None when they do not."""
    try:
        error = float(version.tags[ERROR_TAG])
        return Standing(str(version.version), error, version.tags[TEST_VERSION_TAG])
    except (KeyError, ValueError):
        return None


def rescore(
    client: MlflowClient,
    version: ModelVersion,
    data_dir: Path,
    dataset: str,
    split: str,
    test_version: str,
) -> Standing:
    """Score a registered version on this test split with its own pyfunc's network and
    preprocessing.

    Raises:
        ValueError: the version is not one of this project's image classifiers.
    """
    uri = client.get_model_version_download_uri(version.name, version.version)
    # MLflow runs the model's own copy of classifier_model: an ImageClassifier of another class
    # object than the package's, hence the attribute test.
    scorer = getattr(mlflow.pyfunc.load_model(uri).unwrap_python_model(), "scorer", None)
    if not callable(getattr(scorer, "probabilities", None)):
        raise ValueError(f"v{version.version} is not a resnet-mlops image classifier")
    error = top1_error(scorer, data_dir, dataset, split)
    return Standing(str(version.version), error, test_version)
