"""Training curves as a PNG, drawn from the metric history the tracker keeps locally."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from resnet_mlops.io import atomic_write_bytes
from resnet_mlops.tracking.history import MetricRecord

# A metric goes on the panel whose word its name contains: train_loss and val_loss share one,
# train_error and val_error the other, whatever prefix or separator the trainer uses.
PANELS: tuple[str, ...] = ("loss", "error")


def metric_series(history: Sequence[MetricRecord]) -> dict[str, tuple[list[int], list[float]]]:
    """Each metric's steps and values, in logging order."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in history:
        for key, value in record.metrics.items():
            steps, values = series.setdefault(key, ([], []))
            steps.append(record.step)
            values.append(value)
    return series


def plot_curves(
    history: Sequence[MetricRecord],
    path: Path,
    *,
    x_label: str = "step",
    panels: Sequence[str] = PANELS,
) -> Path:
    """Draw loss and error curves, train and validation on the same axes, against the step.

    Uses the Agg canvas directly rather than pyplot, so it changes no global matplotlib state
    and is safe off the main thread. The file is written atomically.

    Args:
        history: Records as :attr:`RunTracker.history` returns them.
        path: The PNG to write.
        x_label: What the step counts (``"iteration"``, ``"epoch"``).
        panels: One panel per word; a metric is drawn on the first panel whose word its
            name contains (case-insensitive). Metrics that match none are left out.

    Returns:
        ``path``.
    """
    series = metric_series(history)
    figure = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    placed: set[str] = set()
    for ax, word in zip(axes, panels, strict=True):
        for key in sorted(series):
            if key in placed or word not in key.lower():
                continue
            placed.add(key)
            steps, values = series[key]
            # Validation dashed, so the train/val gap reads at a glance in black and white too.
            style = "--" if "val" in key.lower() or "test" in key.lower() else "-"
            ax.plot(steps, values, style, label=key, marker="." if len(steps) < 50 else None)
        ax.set_title(word)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path
