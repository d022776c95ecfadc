"""What a pipeline run produced, read back from its outputs, and its Prefect artifacts.

The stages already record everything: ``models/model.pt`` carries the MLflow run id,
``metrics/*.json`` the figures and ``metrics/register.json`` the champion decision. This module
only reads them and formats the markdown summary and the metrics table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from resnet_mlops.engine.checkpoint import load_checkpoint
from resnet_mlops.mlflow_store import short_http_limits, tracking_uri

MODEL_FILE = Path("models/model.pt")
METRICS = {
    "train": Path("metrics/train.json"),
    "evaluate": Path("metrics/evaluate.json"),
    "register": Path("metrics/register.json"),
}
# The figures worth a row in the table, in this order, when a stage wrote them.
TABLE_KEYS = (
    ("evaluate", "test_top1_error"),
    ("evaluate", "test_top5_error"),
    ("evaluate", "test_loss"),
    ("evaluate", "test_10crop_top1_error"),
    ("evaluate", "samples"),
    ("train", "val_error"),
    ("train", "train_error"),
    ("train", "iteration"),
    ("train", "epoch"),
)


@dataclass
class RunOutcome:
    """One pipeline run: its model, MLflow run and link, metrics and champion decision."""

    dataset: str
    model: str
    tracking_uri: str
    run_id: str | None
    run_link: str | None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def decision(self) -> dict[str, Any]:
        """``metrics/register.json``: name, version, promoted, reason, both errors."""
        return self.metrics.get("register", {})

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for the flow's return value and the grid summary."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "run_link": self.run_link,
            "metrics": self.metrics,
            "overrides": self.overrides,
        }


def run_link(uri: str, run_id: str) -> str | None:
    """``<server>/#/experiments/<id>/runs/<run>`` for an HTTP(S) server; None otherwise or when
    the server does not answer (the run id is shown instead)."""
    if not re.match(r"https?://", uri):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with short_http_limits():
            experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    except (MlflowException, OSError):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def read_outcome(root: Path, dataset: str, model: str) -> RunOutcome:
    """Read the outputs a finished pipeline left in the workspace at ``root``."""
    metrics = {
        stage: json.loads((root / path).read_text())
        for stage, path in METRICS.items()
        if (root / path).exists()
    }
    meta = load_checkpoint(root / MODEL_FILE)
    run_id = meta.get("provenance", {}).get("mlflow_run_id")
    uri = tracking_uri(root)
    return RunOutcome(
        dataset=dataset,
        model=meta.get("model", model),
        tracking_uri=uri,
        run_id=run_id,
        run_link=run_link(uri, run_id) if run_id else None,
        metrics=metrics,
    )


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rounded(value: Any) -> Any:
    """Four decimals for the table (61.37, not 61.370000000000005); other values as they are."""
    return round(value, 4) if isinstance(value, float) else value


def metrics_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """The metrics table: one row per figure the stages wrote."""
    return [
        {"stage": stage, "metric": key, "value": _rounded(outcome.metrics[stage][key])}
        for stage, key in TABLE_KEYS
        if key in outcome.metrics.get(stage, {})
    ]


def champion_line(decision: dict[str, Any]) -> str:
    """The register stage's decision in one sentence."""
    if not decision:
        return "not registered"
    name, version = decision.get("name"), decision.get("version")
    verdict = "promoted to **champion**" if decision.get("promoted") else "kept as challenger"
    return f"`{name}` version {version}: {verdict} ({decision.get('reason', 'no reason given')})"


def summary_markdown(outcome: RunOutcome, flow_run: str | None = None) -> str:
    """The run's markdown summary: model, MLflow run, metrics, champion decision."""
    run = (
        f"[{outcome.run_id}]({outcome.run_link})"
        if outcome.run_link
        else f"`{outcome.run_id}` (tracking: `{outcome.tracking_uri}`)"
    )
    lines = [
        f"# {outcome.model} on {outcome.dataset}",
        "",
        f"- Flow run: `{flow_run}`" if flow_run else None,
        f"- MLflow run: {run}",
        f"- Overrides of params.yaml: {', '.join(f'`{o}`' for o in outcome.overrides)}"
        if outcome.overrides
        else None,
        f"- Registry: {champion_line(outcome.decision)}",
        "",
        "| stage | metric | value |",
        "| --- | --- | --- |",
        *(
            f"| {row['stage']} | {row['metric']} | {_figure(row['value'])} |"
            for row in metrics_rows(outcome)
        ),
    ]
    return "\n".join(line for line in lines if line is not None)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from names."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def publish(outcome: RunOutcome, flow_run: str | None = None) -> None:
    """The run's Prefect artifacts: the markdown summary and the metrics table."""
    create_markdown_artifact(
        markdown=summary_markdown(outcome, flow_run),
        key=artifact_key(outcome.dataset, outcome.model, "summary"),
        description=f"{outcome.model} on {outcome.dataset}: MLflow run, metrics, champion",
    )
    create_table_artifact(
        table=metrics_rows(outcome),
        key=artifact_key(outcome.dataset, outcome.model, "metrics"),
        description=f"{outcome.model} on {outcome.dataset}: metrics",
    )
