"""Figure 6 from the four H200 runs' per-epoch histories, finished or not (no MLflow needed).

``resnet report`` draws only finished runs; this draws the plain runs that stopped at a lease's
deadline too, each to where it stopped.

python reports/paper-cifar10-h200/plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
PANELS = {
    "plain networks": {"plain20": ("plain-20", "tab:blue"), "plain56": ("plain-56", "tab:red")},
    "ResNets": {"resnet20": ("ResNet-20", "tab:blue"), "resnet56": ("ResNet-56", "tab:red")},
}

figure, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
for axes, (title, runs) in zip(panels, PANELS.items(), strict=True):
    for model, (label, color) in runs.items():
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
    axes.set_ylim(0, 30)
    axes.set_xlabel("iteration")
    axes.set_title(f"CIFAR-10, {title}")
    axes.grid(alpha=0.3)
    axes.legend()
panels[0].set_ylabel("error (%): dashed training, bold test")
figure.suptitle("The paper's recipe on the JPEG mirror, one H200")
figure.tight_layout()
figure.savefig(HERE / "figure6_h200.png", dpi=120)
print(HERE / "figure6_h200.png")
