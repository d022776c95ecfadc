"""Figures 6 and 7 of the paper, drawn from our runs, as PNG files."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from resnet_mlops.io import atomic_write_bytes  # noqa: E402
from resnet_mlops.report.runs import RunRecord  # noqa: E402

DEPTH_COLORS = {20: "C0", 32: "C1", 44: "C2", 56: "C3", 110: "C4", 1202: "C5"}


def _save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _label(model: str, shortcut: str) -> str:
    name = model.replace("plain", "plain-").replace("resnet", "ResNet-")
    return f"{name} ({shortcut})" if shortcut not in ("A", "none") else name


def _mean_curve(members: list[RunRecord], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The curve ``key`` against the iteration, averaged over seeds at each epoch."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    iteration: dict[int, float] = {}
    for run in members:
        for step, value in run.curves.get(key, []):
            by_epoch[step].append(value)
        iteration.update(dict(run.curves.get("iteration", [])))
    epochs = sorted(by_epoch)
    x = np.array([iteration.get(e, float(e)) for e in epochs])
    return x, np.array([np.mean(by_epoch[e]) for e in epochs])


def _by_depth(members: list[RunRecord]) -> tuple[int, str]:
    """Plot order: by depth, then name."""
    return (members[0].layers, members[0].model)


def figure6(runs: list[RunRecord], path: Path) -> Path:
    """Training (thin dashed) and test (bold) error against the iteration, plain nets on the
    left and residual ones on the right, one colour per depth (paper Fig. 6)."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.dataset == "cifar10":
            groups[(run.model, run.shortcut)].append(run)
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True, sharey=True)
    top = 0.0
    for (model, shortcut), members in sorted(groups.items(), key=lambda g: _by_depth(g[1])):
        axes = panels[1 if members[0].residual else 0]
        color = DEPTH_COLORS.get(members[0].layers)
        label = _label(model, shortcut)
        x, train = _mean_curve(members, "train_error")
        # A run of one or two epochs has too few points for a visible line: mark them.
        marker = "o" if len(x) <= 2 else None
        axes.plot(x, train, "--", color=color, lw=1.0, marker=marker, ms=4, mfc="none")
        x, test = _mean_curve(members, "val_error")
        test_name = "test" if all(r.evaluates_on_test for r in members) else "val"
        axes.plot(
            x, test, "-", color=color, lw=2.2, marker=marker, ms=6, label=f"{label} ({test_name})"
        )
        top = max([top, *train, *test])
    for axes, title in zip(panels, ("plain networks", "ResNets"), strict=True):
        axes.set_title(f"CIFAR-10, {title}")
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes.transAxes)
    panels[0].set_ylabel("error (%): dashed training, bold test")
    panels[0].set_ylim(0, min(100.0, top * 1.05) if top else 100.0)
    return _save(figure, path)


def figure7(responses: dict[str, np.ndarray], path: Path) -> Path:
    """The std of each 3x3 layer's response, in network order (top) and sorted by magnitude
    (bottom); plain nets dashed, ResNets solid (paper Fig. 7)."""
    figure, (ordered, ranked) = plt.subplots(2, 1, figsize=(9, 7))
    for label, stds in responses.items():
        depth = int("".join(c for c in label.split(" ")[0] if c.isdigit()))
        style = "--" if label.startswith("plain") else "-"
        color = DEPTH_COLORS.get(depth)
        index = np.arange(1, len(stds) + 1)
        ordered.plot(index, stds, style, color=color, lw=1.4, label=label)
        ranked.plot(index, np.sort(stds)[::-1], style, color=color, lw=1.4, label=label)
    ordered.set_xlabel("layer index (original)")
    ranked.set_xlabel("layer index (sorted by magnitude)")
    for axes in (ordered, ranked):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Log scale: a badly trained deep plain net can respond 10x stronger than the rest.
        axes.set_yscale("log")
        axes.set_ylabel("std (log scale)")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    ordered.set_title("CIFAR-10: std of 3x3 layer responses (after BN, before ReLU/addition)")
    return _save(figure, path)
