"""Figure 6's residual panel from the two H200 runs' per-epoch histories (no MLflow needed).

python reports/paper-cifar10-h200/plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = {"resnet20": ("ResNet-20", "tab:blue"), "resnet56": ("ResNet-56", "tab:red")}

figure, axes = plt.subplots(figsize=(8, 4.5))
for model, (label, color) in RUNS.items():
    history = json.loads((HERE / f"{model}_history.json").read_text())
    x = [record["iteration"] for record in history]
    last = int(x[-1])
    ended = "" if last == 64000 else f", stopped at {last:,}"
    axes.plot(x, [r["train_error"] for r in history], "--", color=color, lw=1.0)
    axes.plot(
        x,
        [r["val_error"] for r in history],
        "-",
        color=color,
        lw=2.0,
        label=f"{label} (test{ended})",
    )
for milestone in (32000, 48000):
    axes.axvline(milestone, color="grey", lw=0.8, alpha=0.5)
axes.set_xlim(0, 64000)
axes.set_ylim(0, 20)
axes.set_xlabel("iteration")
axes.set_ylabel("error (%): dashed training, bold test")
axes.set_title("CIFAR-10 JPEG mirror, the paper's recipe on one H200")
axes.grid(alpha=0.3)
axes.legend()
figure.tight_layout()
figure.savefig(HERE / "figure6_residual.png", dpi=120)
print(HERE / "figure6_residual.png")
