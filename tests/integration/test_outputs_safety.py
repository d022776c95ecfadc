"""A command never deletes what it did not write, and a full or read-only disk is one line.

``resnet prepare`` / ``preprocess`` replace only their own previous output (recognised by its
manifest, which lists every file), an empty folder, or with ``--force`` any folder; a file is
never replaced. Disk full and read-only are tested on a real small tmpfs (see small_disk.py).
``resnet pull``'s cases need a registered model: tests/test_registry.py.
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resnet_mlops.cli import app
from resnet_mlops.data.prepare import prepare
from resnet_mlops.data.preprocess import preprocess
from resnet_mlops.engine.checkpoint import save_checkpoint
from resnet_mlops.io import (
    OUTPUT_FILES,
    OUTPUT_MARKER,
    OutputError,
    atomic_directory,
    check_output_file,
    write_json_atomic,
)
from tests.support.archives import write_class_folders
from tests.support.project import PARAMS, REPO, prepare_params, preprocess_params
from tests.support.small_disk import fill, remount_read_only, small_tmpfs


@pytest.fixture
def tree(tmp_path: Path, cifar_jpegs) -> Path:
    return write_class_folders(tmp_path / "tree", cifar_jpegs)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def resnet_prepare(
    tree: Path, out: Path, report: Path, *flags: str, process: bool = False
) -> Result:
    """``resnet prepare`` in this process (fast), or as the installed console script."""
    args = ["prepare", "--params", str(PARAMS), "--out", str(out), "--report", str(report)]
    args += [*flags, f"prepare.cifar10.source={tree}"]
    if process:
        done = subprocess.run(["resnet", *args], capture_output=True, text=True, timeout=300)
        return Result(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(app, args)
    return Result(result.exit_code, result.stdout, result.stderr)


def one_line_error(result: Result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: its bytes, or None for a folder."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def hidden(folder: Path) -> list[str]:
    """Temporary or backup names a write could leave behind (``.x.tmp-*``, ``.x.old-*``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def foreign_folder(path: Path) -> Path:
    """The issue's repro: ``mkdir -p X/sub; echo precious > X/important.txt``."""
    (path / "sub").mkdir(parents=True)
    (path / "important.txt").write_text("precious\n")
    return path


# --- prepare / preprocess: whose folder it is ------------------------------------------------


@pytest.mark.slow  # the installed console script: about 15 s on 2 busy cores
def test_prepare_refuses_a_folder_it_did_not_write_and_force_replaces_it(
    tmp_path: Path, tree: Path
) -> None:
    out = foreign_folder(tmp_path / "x")
    before = snapshot(out)
    result = resnet_prepare(tree, out, tmp_path / "report.json", process=True)
    assert one_line_error(result) == (
        f"error: {out}: exists and was not written by `resnet prepare`; "
        "refusing to replace it (use --force)"
    )
    assert snapshot(out) == before and hidden(tmp_path) == []
    assert not (tmp_path / "report.json").exists()  # refused before any work

    result = resnet_prepare(tree, out, tmp_path / "report.json", "--force")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["outputs"], "manifest.json"])
    assert hidden(tmp_path) == []


def test_a_file_is_never_replaced_by_a_folder_even_with_force(tmp_path: Path, tree: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text("precious: 1\n")
    for flags in ((), ("--force",)):
        result = resnet_prepare(tree, target, tmp_path / "report.json", *flags)
        assert one_line_error(result) == (
            f"error: {target}: exists and is a file, not a folder; refusing to replace it with "
            "the output of `resnet prepare`"
        )
        assert target.read_text() == "precious: 1\n"
        assert hidden(tmp_path) == []  # no .params.yaml.old-<pid>, no temporary folder


def test_prepare_replaces_its_own_output_without_force_but_not_a_file_added_to_it(
    tmp_path: Path, tree: Path
) -> None:
    params = prepare_params(f"prepare.cifar10.source={tree}")
    out = tmp_path / "prepared"
    prepare("cifar10", params, out, tmp_path / "r.json", tmp_path / "dl")
    first = snapshot(out)
    # No marker file: the folder is DVC-tracked and its hash covers every file in it.
    assert OUTPUT_MARKER not in first
    prepare("cifar10", params, out, tmp_path / "r.json", tmp_path / "dl")
    assert snapshot(out) == first and hidden(tmp_path) == []

    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputError, match=r"contains notes.txt, which `resnet prepare` did not"):
        prepare("cifar10", params, out, tmp_path / "r.json", tmp_path / "dl")
    assert (out / "notes.txt").read_text() == "mine\n"
    prepare("cifar10", params, out, tmp_path / "r.json", tmp_path / "dl", force=True)
    assert snapshot(out) == first

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare("cifar10", params, empty, tmp_path / "r.json", tmp_path / "dl")
    assert snapshot(empty) == first


def test_preprocess_refuses_the_prepare_output_and_replaces_its_own(
    tmp_path: Path, tree: Path
) -> None:
    prepared = tmp_path / "prepared"
    prepare("cifar10", prepare_params(f"prepare.cifar10.source={tree}"), prepared,
            tmp_path / "r.json", tmp_path / "dl")  # fmt: skip
    before = snapshot(prepared)
    params = preprocess_params("preprocess.cifar10.val_size=10")
    with pytest.raises(OutputError, match="was not written by `resnet preprocess`"):
        preprocess("cifar10", params, prepared, prepared, tmp_path / "p.json")
    assert snapshot(prepared) == before
    out = tmp_path / "preprocessed"
    preprocess("cifar10", params, prepared, out, tmp_path / "p.json")
    first = snapshot(out)
    preprocess("cifar10", params, prepared, out, tmp_path / "p.json")
    assert snapshot(out) == first and OUTPUT_MARKER not in first and hidden(tmp_path) == []


def test_a_marked_output_lists_what_it_wrote_and_is_replaced_only_then(tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    with atomic_directory(out, "pull", marker={"model": "models:/m/1"}) as tmp:
        (tmp / "artifacts").mkdir()
        (tmp / "artifacts" / "a.bin").write_bytes(b"1")
        (tmp / "MLmodel").write_text("x")
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker == {
        "command": "pull",
        "model": "models:/m/1",
        "entries": ["MLmodel", "artifacts", "artifacts/a.bin"],
    }
    with atomic_directory(out, "pull") as tmp:  # our own output: replaced
        (tmp / "MLmodel").write_text("y")
    assert (out / "MLmodel").read_text() == "y" and not (out / "artifacts").exists()

    (out / "sub").mkdir()
    refused = pytest.raises(OutputError, match=r"contains sub, which `resnet pull` did not write")
    with refused, atomic_directory(out, "pull"):
        raise AssertionError("not reached: refused before the work")
    # Another command's marker is not ours.
    refused = pytest.raises(OutputError, match="was not written by `resnet prepare`")
    with refused, atomic_directory(out, "prepare"):
        raise AssertionError("not reached")
    assert (out / "sub").is_dir() and hidden(tmp_path) == []


def test_an_error_inside_keeps_the_old_output_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    with atomic_directory(out, "pull") as tmp:
        (tmp / "old").write_text("old")
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(out, "pull") as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("boom")
    assert snapshot(out) == before and hidden(tmp_path) == []


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_the_old_output_goes_only_after_the_new_one_is_in_place(
    tmp_path: Path, swap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnet_mlops import io

    if swap == "two renames":  # a system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "pulled"
    with atomic_directory(out, "pull") as tmp:
        (tmp / "old").write_text("old")
    with atomic_directory(out, "pull") as tmp:
        (tmp / "new").write_text("new")
        assert (out / "old").read_text() == "old"  # still there while the new one is written
    assert sorted(p.name for p in out.iterdir()) == [".resnet-output.json", "new"]
    assert hidden(tmp_path) == []  # no .pulled.old-<pid>, no .pulled.tmp-*


def test_a_symbolic_link_is_never_replaced(tmp_path: Path) -> None:
    real = foreign_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    refused = pytest.raises(OutputError, match=f"{link}: is a symbolic link; refusing to replace")
    with refused, atomic_directory(link, "pull", force=True):
        raise AssertionError("not reached")
    assert link.is_symlink() and (real / "important.txt").read_text() == "precious\n"


# --- disk full, read-only: one line naming the output, old output untouched -----------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 320 KiB file system: the small prepared CIFAR folder (about 200 KiB) fits once, not
    twice, so a second prepare runs out of space while the first output still stands."""
    with small_tmpfs(tmp_path / "disk", 320) as mounted:
        yield mounted


def test_prepare_on_a_full_disk_is_one_line_and_keeps_the_old_output(
    tmp_path: Path, tree: Path, disk: Path
) -> None:
    out = disk / "prepared"
    assert resnet_prepare(tree, out, tmp_path / "report.json").returncode == 0
    before = snapshot(out)
    result = resnet_prepare(tree, out, tmp_path / "report.json")
    assert one_line_error(result) == f"error: {out}: no space left on device"
    assert snapshot(out) == before and hidden(disk) == []

    remount_read_only(disk)
    result = resnet_prepare(tree, disk / "other", tmp_path / "report.json")
    assert one_line_error(result) == f"error: {disk / 'other'}: read-only file system"


def test_a_report_on_a_read_only_disk_is_one_line(tmp_path: Path, tree: Path, disk: Path) -> None:
    (disk / "existing").mkdir()
    remount_read_only(disk)
    for report in (disk / "metrics" / "prepare.json", disk / "existing" / "prepare.json"):
        # The folder cannot be made; the temporary file cannot be made: both name the report.
        result = resnet_prepare(tree, tmp_path / "out", report)
        assert one_line_error(result) == f"error: {report}: read-only file system"


def test_json_and_checkpoint_writes_on_a_full_disk_name_the_file(disk: Path) -> None:
    write_json_atomic(disk / "old.json", {"kept": True})
    fill(disk)
    with pytest.raises(OSError, match=r"No space left on device") as caught:
        write_json_atomic(disk / "old.json", {"big": "x" * 100_000})
    assert caught.value.filename == str(disk / "old.json")
    assert json.loads((disk / "old.json").read_text()) == {"kept": True}
    (disk / "filler").unlink()
    # torch's zip writer reports a full disk as a RuntimeError; it is named as an OSError.
    state = {"weights": torch.zeros(200_000)}  # 800 KB: more than the disk
    with pytest.raises(OSError, match=r"No space left on device") as caught:
        save_checkpoint(disk / "checkpoint.pt", state)
    assert caught.value.filename == str(disk / "checkpoint.pt")
    assert sorted(p.name for p in disk.iterdir()) == ["old.json"]


def test_a_folder_is_never_made_inside_a_file(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("precious: 1\n")
    target = params / "model"
    refused = pytest.raises(OutputError, match=f"{target}: {params} is a file, not a folder")
    with refused, atomic_directory(target, "pull", force=True):
        raise AssertionError("not reached")
    assert params.read_text() == "precious: 1\n" and hidden(tmp_path) == []


@pytest.mark.slow  # builds the small data set and starts a training
def test_training_on_a_full_disk_is_one_line_naming_the_file(small_cifar: Path, disk: Path) -> None:
    fill(disk)
    args = ["train", "--params", str(PARAMS), "--data", str(small_cifar)]
    args += ["--out", str(disk / "models"), "--metrics", str(disk / "train.json")]
    args += ["--history", str(disk / "history.json")]
    args += ["train.batch_size=16", "train.schedule.length=2", "train.schedule.milestones=[1]"]
    args += ["train.checkpoint_every=0", "train.log_every=1", "loader.num_threads=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    # Besides the run's own "MLflow run <id>: <where>" line at the start, the one error line.
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("MLflow run ")]
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert re.fullmatch(rf"error: {re.escape(str(disk))}/\S+: no space left on device", line)
    # Nothing half-written: no temporary file, no output that a later run could mistake (the
    # output folder's lock file stays, empty: it holds no output).
    left = sorted(p.relative_to(disk).as_posix() for p in disk.rglob("*") if p.is_file())
    assert left == ["filler", "models/.lock"] and not (disk / "models" / ".lock").stat().st_size


def test_an_mlflow_download_onto_a_full_disk_is_a_local_error_not_mlflow(
    tmp_path: Path, disk: Path
) -> None:
    """MLflow flattens a failed download's OSError into an MlflowException's text (pinned here
    for the installed MLflow): pull must read the local disk error back out of it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from resnet_mlops.registry.pull import local_write_error

    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "weights.bin").write_bytes(bytes(1_000_000))  # more than the 320 KiB disk
    target = disk / "download"
    target.mkdir()
    with pytest.raises(MlflowException) as caught:
        mlflow.artifacts.download_artifacts(artifact_uri=store.as_uri(), dst_path=str(target))
    local = local_write_error(caught.value, target)
    assert local is not None and local.errno == errno.ENOSPC
    assert local_write_error(caught.value, tmp_path / "elsewhere") is None  # not that folder
    server = MlflowException("API request failed with error code 500: [Errno 28] on the server")
    assert local_write_error(server, target) is None


def test_a_report_path_that_is_a_folder_is_one_line(tmp_path: Path, tree: Path) -> None:
    report = tmp_path / "metrics"
    (report / "keep.txt").parent.mkdir()
    (report / "keep.txt").write_text("mine\n")
    result = resnet_prepare(tree, tmp_path / "out", report)
    assert one_line_error(result) == f"error: {report}: is a directory"
    assert (report / "keep.txt").read_text() == "mine\n" and hidden(report) == []


# --- single-file outputs: --report, --metrics, --history, --out of a JSON file -------------

# The project's own committed outputs, each written by the command and option named.
COMMITTED = {
    "check-params --out": "checks/params.json",
    "prepare --report": "metrics/prepare.json",
    "preprocess --report": "metrics/preprocess.json",
    "train --metrics": "metrics/train.json",
    "train --headline": "metrics/headline/train.json",
    "train --history": "plots/train_history.json",
    "evaluate --metrics": "metrics/evaluate.json",
    "evaluate --headline": "metrics/headline/evaluate.json",
    "register --out": "metrics/register.json",
    "register --headline": "metrics/headline/register.json",
    "report --metrics": "metrics/report.json",
}


def test_a_file_output_is_recognised_by_its_own_command_only(tmp_path: Path) -> None:
    assert COMMITTED.keys() == OUTPUT_FILES.keys()
    for writer, name in COMMITTED.items():
        for output in OUTPUT_FILES:
            if output == writer:
                check_output_file(REPO / name, output)  # its own: replaced
            else:
                with pytest.raises(OutputError, match="was not written by"):
                    check_output_file(REPO / name, output)
    for harmless in ("", "{}", "[]\n"):  # nothing to lose
        (tmp_path / "empty.json").write_text(harmless)
        check_output_file(tmp_path / "empty.json", "train --history")


def file_commands(target: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Each command that writes a single file, writing it to ``target`` (the refusal comes
    before it reads its inputs, so those need not exist)."""
    missing = str(tmp_path / "missing")
    params = ["--params", str(PARAMS)]
    return {
        "check-params --out": ["check-params", *params, "--out", str(target)],
        "prepare --report": ["prepare", *params, "--out", missing, "--report", str(target)],
        "preprocess --report": ["preprocess", *params, "--prepared", missing, "--out", missing]
        + ["--report", str(target)],
        "train --metrics": ["train", *params, "--data", missing, "--out", missing]
        + ["--metrics", str(target), "--history", str(tmp_path / "history.json")],
        "train --headline": ["train", *params, "--data", missing, "--out", missing]
        + ["--metrics", str(tmp_path / "train.json"), "--history", str(tmp_path / "h.json")]
        + ["--headline", str(target)],
        "train --history": ["train", *params, "--data", missing, "--out", missing]
        + ["--metrics", str(tmp_path / "train.json"), "--history", str(target)],
        "evaluate --metrics": ["evaluate", *params, "--model", missing, "--data", missing]
        + ["--metrics", str(target), "--plots", missing],
        "evaluate --headline": ["evaluate", *params, "--model", missing, "--data", missing]
        + ["--metrics", str(tmp_path / "e.json"), "--plots", missing, "--headline", str(target)],
        "register --out": ["register", *params, "--model", missing, "--evaluation", missing]
        + ["--data", missing, "--out", str(target)],
        "register --headline": ["register", *params, "--model", missing, "--evaluation", missing]
        + ["--data", missing, "--out", str(tmp_path / "r.json"), "--headline", str(target)],
        "report --metrics": ["report", *params, "--out", missing, "--metrics", str(target)],
    }


def test_a_file_the_command_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    """The issue's repro: ``resnet prepare ... --report params.yaml`` replaced params.yaml."""
    precious = tmp_path / "params.yaml"
    precious.write_text("precious: 1\n")
    for output, args in file_commands(precious, tmp_path).items():
        result = CliRunner().invoke(app, args)
        force = " (use --force)" if output.startswith("pre") else ""
        assert one_line_error(Result(result.exit_code, result.stdout, result.stderr)) == (
            f"error: {precious}: exists and was not written by `resnet {output}`; "
            f"refusing to replace it{force}"
        ), output
        assert precious.read_text() == "precious: 1\n", output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], output


def test_a_report_replaces_its_own_and_force_replaces_any(tmp_path: Path, tree: Path) -> None:
    report = tmp_path / "report.json"
    assert resnet_prepare(tree, tmp_path / "out", report).returncode == 0
    assert resnet_prepare(tree, tmp_path / "out", report).returncode == 0  # its own: replaced
    report.write_text("precious: 1\n")
    result = resnet_prepare(tree, tmp_path / "out", report)
    assert one_line_error(result).startswith(f"error: {report}: exists and was not written")
    assert report.read_text() == "precious: 1\n"
    assert resnet_prepare(tree, tmp_path / "out", report, "--force").returncode == 0
    assert json.loads(report.read_text())["dataset"] == "cifar10"
    link = tmp_path / "link.json"
    link.symlink_to(report)
    result = resnet_prepare(tree, tmp_path / "out", link)
    assert one_line_error(result) == (
        f"error: {link}: is a symbolic link; refusing to replace it (use --force)"
    )
