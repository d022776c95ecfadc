"""What a person watching a log or a figure sees: the first progress line at once, a line at
least every LOG_SECONDS in logs, and one-epoch runs drawn with visible markers in Figure 6."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from resnet_mlops.report import figures
from resnet_mlops.report.runs import RunRecord
from resnet_mlops.train import progress
from resnet_mlops.train.progress import ProgressReporter


def _steps(reporter: ProgressReporter, iterations: range) -> None:
    sums = torch.tensor([2.3, 1.0, 8.0], dtype=torch.float64)
    with reporter:
        for iteration in iterations:
            reporter.step(iteration, 0, sums, 0.1, 8)


def test_first_step_is_reported_at_once_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    _steps(ProgressReporter(total=500, epochs=2, enabled=True, every=100), range(1, 51))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("it 1/500 epoch 1/2")  # not only at iteration 100
    assert len(lines) == 1


def test_a_resumed_run_reports_its_first_step(capsys: pytest.CaptureFixture[str]) -> None:
    _steps(ProgressReporter(total=500, epochs=2, enabled=True, every=100), range(41, 61))
    assert capsys.readouterr().out.splitlines()[0].startswith("it 41/500")


def test_a_log_gets_a_line_every_log_seconds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # every step is "late"
    _steps(ProgressReporter(total=500, epochs=2, enabled=True, every=100), range(1, 6))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["1/500", "2/500", "3/500", "4/500", "5/500"]


def _run(model: str, epochs: int) -> RunRecord:
    curves = {
        "train_error": [(e, 40.0 - e) for e in range(1, epochs + 1)],
        "val_error": [(e, 45.0 - e) for e in range(1, epochs + 1)],
        "iteration": [(e, 391.0 * e) for e in range(1, epochs + 1)],
    }
    return RunRecord(
        run_id=model,
        experiment_id="0",
        model=model,
        dataset="cifar10",
        shortcut="A" if model.startswith("resnet") else "none",
        seed=0,
        params={},
        metrics={"test_loss": 1.0},
        curves=curves,
    )


@pytest.mark.parametrize(("epochs", "marked"), [(1, True), (2, True), (5, False)])
def test_figure6_marks_short_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int, marked: bool
) -> None:
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or path)
    figures.figure6([_run("resnet20", epochs), _run("plain20", epochs)], tmp_path / "f6.png")
    lines = [line for axes in drawn[0].axes for line in axes.lines]
    assert len(lines) == 4  # training and test curve of each net
    assert all((line.get_marker() not in (None, "None", "")) == marked for line in lines)
    plt.close(drawn[0])
