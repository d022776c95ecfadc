"""Figures a person reads are free of float noise: 12.26, not 12.260000000000005, in the
evaluation metrics, the model card and the Prefect metrics table."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pipelines.summary import RunOutcome, metrics_rows
from resnet_mlops.engine.metrics import EvalResult, percent
from resnet_mlops.registry.pull import model_card


def test_percent_drops_float_noise_only() -> None:
    assert 100 * (1 - 9774 / 10000) != 2.26  # the noise this removes
    assert repr(percent(1 - 9774 / 10000)) == "2.26"
    assert repr(percent(1 - 8774 / 10000)) == "12.26"
    assert percent(1 / 3) == 33.3333333333  # real digits stay


def test_evaluation_metrics_are_rounded() -> None:
    evaluation = EvalResult(
        samples=10000,
        loss=0.5,
        top1_error=1 - 8774 / 10000,
        top5_error=1 - 9947 / 10000,
        confusion=torch.zeros(2, 2, dtype=torch.long),
    )
    figures = evaluation.as_metrics("test")
    assert repr(figures["test_top1_error"]) == "12.26"
    assert repr(figures["test_top5_error"]) == "0.53"


def test_model_card_and_prefect_table_show_rounded_figures() -> None:
    version = SimpleNamespace(
        name="m",
        version="1",
        run_id="r",
        tags={"test_top1_error": "12.260000000000005", "samples": "10000", "val_error": "nan"},
    )
    spec = {"crop": 32, "resize_shorter": 32, "std": [1.0, 1.0, 1.0], "classes": ["a", "b"]}
    card = model_card(version, [], spec, "sqlite:///x")
    assert "| test_top1_error | 12.26 |" in card and "| val_error | nan |" in card
    assert "0000000" not in card
    outcome = RunOutcome("cifar10", "resnet20", "sqlite:///x", None, None)
    outcome.metrics = {"train": {"train_error": 61.370000000000005}}
    rows = metrics_rows(outcome)
    assert rows == [{"stage": "train", "metric": "train_error", "value": 61.37}]
