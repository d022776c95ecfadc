"""studies.yaml: the paper's grids and recipes as override sets, checked against params.yaml."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_mlops.cli import app
from resnet_mlops.params.base import ConfigError, load_sections
from resnet_mlops.report.studies import load_studies, validate_study
from tests.support.project import PARAMS, REPO

STUDIES = REPO / "studies.yaml"
SECTIONS = ("train", "loader", "evaluate")


@pytest.mark.parametrize("name", list(load_studies(STUDIES)))
def test_every_run_of_every_study_parses_against_params_yaml(name: str) -> None:
    validate_study(load_studies(STUDIES)[name], PARAMS)


def test_the_studies_cover_the_papers_experiments() -> None:
    studies = load_studies(STUDIES)
    depth = studies["cifar10-depth"]
    assert {r.model for r in depth.runs()} == {
        f"{kind}{n}" for kind in ("plain", "resnet") for n in (20, 32, 44, 56, 110)
    }
    assert "resnet1202" in {r.model for r in depth.runs(include_optional=True)}
    assert "preprocess.cifar10.val_size=0" in depth.overrides  # Table 6 is a test error
    shortcuts = studies["cifar10-shortcuts"].runs()
    assert [(r.model, r.variant) for r in shortcuts] == [("resnet32", o) for o in "ABC"]
    assert shortcuts[2].overrides[-2:] == ("train.shortcut=C", "train.model=resnet32")
    plain = studies["imagenet-plain-vs-residual"]
    assert set(plain.models) == {"plain18", "plain34", "resnet18", "resnet34"}
    assert studies["imagenet-recipes"].models == (
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    )


def test_cpu_depth_study_is_the_committed_reports_schedule() -> None:
    # reports/paper-cifar10-cpu-10k/ was made with run.sh and these settings.
    study = load_studies(STUDIES)["cifar10-depth-cpu"]
    assert study.grid == "paper-cifar10-cpu-10k"
    assert {r.model for r in study.runs()} == {"plain20", "plain56", "resnet20", "resnet56"}
    for run in study.runs():
        _, sections, tree = load_sections(PARAMS, SECTIONS, run.overrides)
        schedule = sections["train"].schedule
        assert (schedule.length, schedule.milestones) == (10000, (8000, 9000))
        assert tree["preprocess"]["cifar10"]["val_size"] == 0


def test_imagenet_recipe_is_the_papers_section_3_4() -> None:
    for run in load_studies(STUDIES)["imagenet-recipes"].runs():
        dataset, sections, _ = load_sections(PARAMS, SECTIONS, run.overrides)
        train = sections["train"]
        assert dataset == "imagenet" and train.model == run.model
        assert (train.batch_size, train.optimizer.lr, train.optimizer.weight_decay) == (
            256,
            0.1,
            0.0001,
        )
        assert train.optimizer.momentum == 0.9
        schedule = train.schedule
        assert (schedule.unit, schedule.length, schedule.milestones) == ("epochs", 90, (30, 60))
        assert sections["loader"].imagenet_augmentation == "scale"
        assert sections["evaluate"].ten_crop and sections["evaluate"].split == "val"


def test_study_command_prints_queued_dvc_experiments_and_flow_calls() -> None:
    result = CliRunner().invoke(app, ["study", "cifar10-shortcuts", "--params", str(PARAMS)])
    assert result.exit_code == 0, result.output
    *queued, start = result.output.strip().splitlines()
    assert len(queued) == 3
    for line, option in zip(queued, "ABC", strict=True):
        words = shlex.split(line)
        assert words[:4] == ["dvc", "exp", "run", "--queue"]
        assert words[4:6] == ["-n", f"cifar10-shortcuts-resnet32-{option}"]
        assert f"train.shortcut={option}" in words and "train.model=resnet32" in words
    assert start.startswith("RESNET_RUN_TAGS=") and "paper-cifar10-shortcuts" in start
    flow = CliRunner().invoke(app, ["study", "imagenet-recipes", "--flow"])
    assert flow.exit_code == 0, flow.output
    words = shlex.split(flow.output)
    assert words[:5] == ["python", "-m", "pipelines.grid", "--grid", "paper-imagenet"]
    assert "train.schedule.milestones=[30,60]" in words
    listing = CliRunner().invoke(app, ["study"])
    assert listing.exit_code == 0 and "cifar10-depth:" in listing.output


def test_a_bad_study_is_a_one_line_error_naming_study_run_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "studies.yaml"
    bad.write_text(
        "recipes:\n  r: [dataset=cifar10]\n"
        "studies:\n  s:\n    about: x\n    recipe: r\n    grid: g\n    models: [resnet20]\n"
        "    overrides: [train.optimizer.lrr=0.1]\n"
    )
    with pytest.raises(ConfigError, match=r"study s, run s-resnet20: .*train\.optimizer\.lrr"):
        validate_study(load_studies(bad)["s"], PARAMS)
    result = CliRunner().invoke(app, ["study", "s", "--studies", str(bad)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    bad.write_text("recipes: {}\nstudies:\n  s: {about: x, recipe: nope, grid: g, models: []}\n")
    with pytest.raises(ConfigError, match="studies.s.recipe: unknown recipe 'nope'"):
        load_studies(bad)
