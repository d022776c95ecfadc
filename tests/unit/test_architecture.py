"""The package's layers import downward only, and each DVC stage depends on exactly its code."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.architecture import SRC, as_deps, closure_files, expand_deps

REPO = SRC.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_layers_import_downward_only() -> None:
    # import-linter's contracts in pyproject.toml: the layers and "never imports prefect".
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency"
    result = subprocess.run(
        [lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_import_closure_of_its_module(stage: str) -> None:
    module = f"resnet_mlops.stages.{stage}"
    assert (SRC / "resnet_mlops" / "stages" / f"{stage}.py").exists(), module
    deps = [d for d in STAGES[stage]["deps"] if d.startswith("src/")]
    closure = closure_files(module)
    listed = expand_deps(deps)
    assert listed - closure == set(), f"{stage}: deps the stage never runs"
    assert closure - listed == set(), f"{stage}: code the stage runs but DVC does not watch"
    assert deps == as_deps(closure), f"{stage}: not in the canonical (folders, then files) form"


def test_editing_the_report_reruns_only_the_report_stage() -> None:
    users = {
        stage
        for stage in STAGES
        if Path("src/resnet_mlops/report/figures.py")
        in closure_files(f"resnet_mlops.stages.{stage}")
    }
    assert users == {"report"}


def test_a_module_no_stage_imports_reruns_nothing() -> None:
    runs = set().union(*(closure_files(f"resnet_mlops.stages.{s}") for s in STAGES))
    # The model zoo's table and the registry's pull serve the CLI only.
    for module in ("models/zoo.py", "registry/pull.py", "cli/__init__.py"):
        assert Path("src/resnet_mlops") / module not in runs


def test_test_tiers_share_helpers_through_tests_support_only() -> None:
    # A test module imported by another drags its fixtures and its tier's cost along; shared
    # helpers live in tests/support.
    tests = REPO / "tests"
    imports = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(tests.rglob("test_*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.lstrip().startswith(("from tests.", "import tests."))
        and not line.lstrip().startswith(("from tests.support", "import tests.support"))
    ]
    assert imports == []


def test_no_function_is_over_80_lines_or_8_parameters() -> None:
    # A Typer command declares one parameter per flag of its command line; those are exempt.
    too_big = []
    for path in sorted((SRC / "resnet_mlops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            count = len(names) + bool(args.vararg) + bool(args.kwarg) - (names[:1] == ["self"])
            command = any("command" in ast.unparse(d) for d in node.decorator_list)
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if lines > 80 or (count > 8 and not command):
                too_big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert too_big == []
