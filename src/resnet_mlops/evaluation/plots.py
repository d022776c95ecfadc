"""The confusion matrix as a PNG a person would rather look at than the CSV."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from resnet_mlops.io import atomic_write_bytes  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """A row-normalised confusion matrix (annotated when there are few classes)."""
    rows = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(5.0, min(0.5 * len(classes), 20.0))
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    if len(classes) <= 20:
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                value = rows[i, j].item()
                if value >= 0.005:
                    color = "white" if value > 0.5 else "black"
                    axes.text(
                        j,
                        i,
                        f"{100 * value:.0f}",
                        ha="center",
                        va="center",
                        color=color,
                        fontsize=8,
                    )
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    _save(figure, path)
