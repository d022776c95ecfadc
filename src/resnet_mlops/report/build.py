"""``build_report``: the paper's tables and figures from MLflow runs, without retraining."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from resnet_mlops.io import atomic_write_bytes, write_json_atomic
from resnet_mlops.report.figures import figure6, figure7
from resnet_mlops.report.html import render_html, render_markdown
from resnet_mlops.report.responses import cifar_test_batch, load_run_model, response_stds
from resnet_mlops.report.runs import RunRecord, find_runs
from resnet_mlops.report.tables import imagenet_rows, table6_rows

HTML_FILE = "report.html"
ROWS_FILE = "report.json"
FIGURE6_FILE = "figure6_error_curves.png"
FIGURE7_FILE = "figure7_layer_responses.png"


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote.

    Attributes:
        html: The self-contained page (figures embedded as data URIs).
        figures: The PNG files, also in the page.
        markdown: A short summary, e.g. for a Prefect Markdown artifact.
        rows: Table 6 rows, then ImageNet rows (``table`` says which), as plain values.
    """

    html: Path
    figures: list[Path]
    markdown: str
    rows: list[dict[str, Any]]


def _responses(
    client: MlflowClient,
    runs: list[RunRecord],
    tracking_uri: str,
    data_dir: Path,
    images: int,
    notes: list[str],
) -> dict[str, Any]:
    """Figure 7's curves: one per CIFAR-10 model and shortcut (its first seed's run)."""
    first: dict[tuple[str, str, str], RunRecord] = {}
    for run in runs:
        if run.dataset == "cifar10":
            first.setdefault(run.group, run)
    curves = {}
    batches: dict[str, Any] = {}
    for (_, model, shortcut), run in sorted(first.items(), key=lambda g: (g[1].layers, g[0])):
        try:
            loaded = load_run_model(client, run, tracking_uri)
        except (MlflowException, OSError, RuntimeError) as error:  # unreadable or mismatched
            notes.append(f"Figure 7 leaves out {model} (run {run.run_id}): {error}")
            continue
        if loaded is None:
            notes.append(f"Figure 7 leaves out {model} (run {run.run_id}): it logged no model.")
            continue
        mode = run.params.get("loader.cifar_normalization", "pixel")
        if mode not in batches:
            batches[mode] = cifar_test_batch(data_dir, images, mode)
        name = model.replace("plain", "plain-").replace("resnet", "ResNet-")
        label = name if shortcut in ("A", "none") else f"{name} ({shortcut})"
        curves[label] = response_stds(loaded, batches[mode])
    if curves:
        count = len(next(iter(batches.values())))
        notes.append(f"Figure 7 is measured on {count} test images of {data_dir}.")
    return curves


def build_report(
    tracking_uri: str,
    out_dir: Path,
    *,
    experiment: str = "resnet-cifar10",
    grid: str | None = None,
    data_dir: Path | None = None,
    response_images: int = 1000,
) -> Report:
    """Render the paper's Table 6, Figures 6 and 7 and the ImageNet table from MLflow runs.

    Args:
        tracking_uri: The tracking server or store holding the runs.
        out_dir: Where ``report.html``, ``report.json`` and the PNG figures go.
        experiment: The MLflow experiment.
        grid: Only runs tagged ``grid=<grid>``; None: every finished run of the experiment.
        data_dir: Preprocessed CIFAR-10 whose test images feed Figure 7; None leaves the
            figure out (so does a run that logged no model, with a note in the page).
        response_images: How many test images Figure 7 uses, spread over the split.

    Returns:
        The paths written, a Markdown summary and the table rows.

    Raises:
        ReportError: no such experiment, or no finished run in it (or in the grid).
        DataError: ``data_dir`` is not a preprocessed CIFAR-10 folder.
    """
    client = MlflowClient(tracking_uri)
    runs, unfinished = find_runs(client, experiment, grid, tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    selection = f"runs tagged grid={grid}" if grid else "every finished run"
    notes = [f"Left out: {unfinished} matching run(s) that did not finish."] if unfinished else []
    table6 = table6_rows(runs)
    notes += _test_error_notes(table6)
    imagenet = imagenet_rows(runs)
    figures: dict[str, Path] = {}
    if any(run.dataset == "cifar10" for run in runs):
        figures["Figure 6: training and test error"] = figure6(runs, out_dir / FIGURE6_FILE)
        if data_dir is None:
            notes.append("Figure 7 needs the preprocessed CIFAR-10 data (--data): left out.")
        else:
            curves = _responses(client, runs, tracking_uri, data_dir, response_images, notes)
            if curves:
                figures["Figure 7: std of layer responses"] = figure7(
                    curves, out_dir / FIGURE7_FILE
                )
    title = f"Deep Residual Learning, reproduced: {grid or experiment}"
    source = (
        f"From {len(runs)} MLflow runs ({selection}) of experiment {experiment!r} at "
        f"{tracking_uri}; nothing was retrained."
    )
    html_path = out_dir / HTML_FILE
    page = render_html(
        title=title,
        source=source,
        table6=table6,
        imagenet=imagenet,
        figures=figures,
        notes=notes,
    )
    atomic_write_bytes(html_path, page.encode())
    rows = [{"table": "table6", **row} for row in table6] + [
        {"table": "imagenet", **row} for row in imagenet
    ]
    write_json_atomic(
        out_dir / ROWS_FILE,
        {
            "experiment": experiment,
            "grid": grid,
            "runs": [run.run_id for run in runs],
            "rows": json.loads(json.dumps(rows)),
        },
    )
    markdown = render_markdown(title, table6, imagenet, html_path)
    return Report(html_path, list(figures.values()), markdown, rows)


def _test_error_notes(table6: list[dict[str, Any]]) -> list[str]:
    """What the page says about where Table 6's test errors come from, when not all are
    scored by ``resnet evaluate``."""
    notes = []
    sources = {source for row in table6 for source in row["test_error_source"]}
    if "last epoch" in sources:
        notes.append(
            "Test errors of runs that `resnet evaluate` did not score are their last epoch's "
            "evaluation on the test set (runs trained without a validation split)."
        )
    if any(row["runs"] and row["test_error"] is None for row in table6):
        notes.append(
            "Runs trained with a validation split and never scored by `resnet evaluate` have "
            "no test error."
        )
    return notes


def log_report(report: Report, tracking_uri: str, run_id: str) -> None:
    """Store the page and its figures as artifacts of ``run_id`` (under ``report/``), e.g.
    a grid's parent run.

    Raises:
        MlflowException: the server could not be reached or has no such run.
    """
    client = MlflowClient(tracking_uri)
    for path in (report.html, *report.figures):
        client.log_artifact(run_id, str(path), "report")


def summary_metrics(report: Report) -> dict[str, Any]:
    """The rows that ran as DVC metrics: ``{"<model>[-<shortcut>]": {errors, runs}}``."""
    summary: dict[str, Any] = {}
    for row in report.rows:
        if not row["runs"]:
            continue
        default = ("none", "A") if row["table"] == "table6" else ("none", "B")
        name = row["model"] if row["shortcut"] in default else f"{row['model']}-{row['shortcut']}"
        keys = ("test_error", "train_error", "top1", "top5", "top1_10crop", "top5_10crop")
        summary[f"{row['table']}/{name}"] = {
            "runs": row["runs"],
            **{k: row[k] for k in keys if row.get(k) is not None},
        }
    return summary
