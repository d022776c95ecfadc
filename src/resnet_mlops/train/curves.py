"""The training curves as a PNG: train and validation error and loss against the epoch."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from resnet_mlops.io import atomic_write_bytes  # noqa: E402


def plot_training_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Training and validation error (and loss) against the epoch, as the paper's Fig. 6."""
    epochs = [record["epoch"] for record in history]
    figure, (errors, losses) = plt.subplots(1, 2, figsize=(11, 4))
    errors.plot(epochs, [r["train_error"] for r in history], label="train error", lw=1.2)
    errors.plot(epochs, [r["val_error"] for r in history], label="val error", lw=2)
    errors.set_ylabel("error (%)")
    losses.plot(epochs, [r["train_loss"] for r in history], label="train loss", lw=1.2)
    # Trained without a validation split, the end-of-epoch evaluation is on the test set and
    # the loop logs test_loss (only the top-1 error is renamed val_error).
    loss_key = "val_loss" if "val_loss" in history[-1] else "test_loss"
    losses.plot(epochs, [r[loss_key] for r in history], label=loss_key.replace("_", " "), lw=2)
    losses.set_ylabel("cross-entropy")
    for axes in (errors, losses):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
