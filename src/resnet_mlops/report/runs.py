"""The MLflow runs a report draws from: config, final metrics and per-epoch curves."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run

from resnet_mlops.errors import UserError

CURVES = ("train_error", "val_error", "iteration")


class ReportError(UserError, ValueError):
    """A user-facing problem with the report's input (no such experiment, no runs)."""


@dataclass(frozen=True)
class RunRecord:
    """One finished training run, as the report needs it."""

    run_id: str
    experiment_id: str
    model: str
    dataset: str
    shortcut: str  # A, B or C for residual nets, "none" for plain ones
    seed: int
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (epoch, value)

    @property
    def residual(self) -> bool:
        return not self.model.startswith("plain")

    @property
    def layers(self) -> int:
        return int("".join(c for c in self.model if c.isdigit()))

    @property
    def evaluates_on_test(self) -> bool:
        """Whether the per-epoch ``val_error`` is the test error (trained with no val split).

        The loop logs the evaluation loss under the split's name (``val_loss`` or
        ``test_loss``) and renames only the top-1 error to ``val_error``.
        """
        return "val_loss" not in self.metrics and "test_loss" in self.metrics

    def test_error(self) -> tuple[float, str] | None:
        """The final test top-1 error (percent) and where it comes from, if the run has one.

        ``resnet evaluate`` logs ``test_top1_error``; without it, the last epoch's
        ``val_error`` counts when that evaluation ran on the test split.
        """
        if "test_top1_error" in self.metrics:
            return self.metrics["test_top1_error"], "resnet evaluate"
        if self.evaluates_on_test and "val_error" in self.metrics:
            return self.metrics["val_error"], "last epoch"
        return None

    @property
    def group(self) -> tuple[str, str, str]:
        """Runs that differ only in their seed share a group: one table row, one curve."""
        return (self.dataset, self.model, self.shortcut)


def _shortcut(model: str, dataset: str, value: str) -> str:
    if model.startswith("plain"):
        return "none"
    if value != "default":
        return value
    return "A" if dataset == "cifar10" else "B"  # the builders' defaults (paper 4.2 and 3.3)


def _record(client: MlflowClient, run: Run) -> RunRecord:
    params, tags = run.data.params, run.data.tags
    model = tags.get("model") or params.get("train.model", "?")
    dataset = tags.get("dataset") or params.get("dataset", "?")
    curves = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in CURVES
    }
    return RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model=model,
        dataset=dataset,
        shortcut=_shortcut(model, dataset, params.get("train.shortcut", "default")),
        seed=int(params.get("train.seed", 0)),
        params=dict(params),
        metrics=dict(run.data.metrics),
        curves={k: sorted(v) for k, v in curves.items()},
    )


def find_runs(
    client: MlflowClient, experiment: str, grid: str | None, where: str
) -> tuple[list[RunRecord], int]:
    """The finished training runs of ``experiment`` (those tagged ``grid=<grid>`` if given),
    oldest first, and how many matching runs were left out because they did not finish.

    A grid's parent run has no ``model`` tag and is not a training run: it is skipped.

    Raises:
        ReportError: no such experiment, or no finished training run in it.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no MLflow experiment {experiment!r} at {where}")
    query = f"tags.grid = '{grid}'" if grid else ""
    runs = client.search_runs(
        [found.experiment_id], query, max_results=10000, order_by=["attributes.start_time ASC"]
    )
    training = [run for run in runs if "model" in run.data.tags]
    finished = [run for run in training if run.info.status == "FINISHED"]
    if not finished:
        which = f" tagged grid={grid}" if grid else ""
        raise ReportError(
            f"no finished training runs{which} in MLflow experiment {experiment!r} at {where}"
        )
    return [_record(client, run) for run in finished], len(training) - len(finished)
