"""The ``resnet`` command line, through its installed entry point."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from resnet_mlops.cli import app
from resnet_mlops.models import MODELS


def test_models_describes_the_named_models_as_json() -> None:
    result = CliRunner().invoke(app, ["models", "resnet20", "resnet50", "plain20", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert list(rows) == ["resnet20", "resnet50", "plain20"]
    assert rows["resnet20"]["parameters"] == 269_722
    assert rows["resnet20"]["layers"] == 20
    assert rows["resnet20"]["paper_top1_error"] == 8.75
    assert rows["resnet50"]["dataset"] == "imagenet"
    assert rows["resnet50"]["multiply_adds"] == 3_857_973_248
    assert rows["plain20"]["shortcut"] == "none"
    assert rows["plain20"]["paper_top1_error"] is None


@pytest.mark.slow  # builds every network (11 s)
def test_models_lists_the_whole_zoo_as_json() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.output)] == list(MODELS)


@pytest.mark.slow  # the fast set runs the console script in test_unknown_model_is_a_one_line_error
def test_models_table_from_the_console_script() -> None:
    result = subprocess.run(["resnet", "models"], capture_output=True, text=True, check=True)
    assert "resnet1202" in result.stdout
    assert "19,421,274" in result.stdout


def test_unknown_model_is_a_one_line_error() -> None:
    result = subprocess.run(["resnet", "models", "resnet21"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown model(s) resnet21")
