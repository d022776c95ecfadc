"""The GPU device check (bench/device/): carrying parts, and its dry run on this CPU.

The dry run is the same script as on the GPU, with DALI's CPU-only mode and tiny sizes, on real
images from the team's mirror: it must write every step's record with the fields the device
run's records will have.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.archives import tar_folder, write_class_folders
from tests.support.data_fixtures import imagenet_jpegs, write_imagenet_dir
from tests.support.project import REPO

sys.path.insert(0, str(REPO / "bench" / "device"))
sys.path.insert(0, str(REPO / "bench"))

from repeat_shards import repeat_shards  # noqa: E402
from split_wheels import CarryError, check_parts, join, split  # noqa: E402

DEVICE = REPO / "bench" / "device"
STEPS = ("dali_pipeline", "resnet50_training", "cifar_recipe", "dvc_repro", "ten_crop_evaluation")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    env.pop("OUT", None)
    return env


def _fake_sources(root: Path) -> list[Path]:
    """A fake wheel and a data folder with nested files: random bytes, not a download."""
    wheels, data = root / "wheels", root / "data" / "deep"
    wheels.mkdir(parents=True)
    data.mkdir(parents=True)
    (wheels / "fake-1.0-py3-none-any.whl").write_bytes(os.urandom(250_000))
    (data / "a.bin").write_bytes(os.urandom(70_000))
    (data.parent / "b.txt").write_text("small\n")
    return [root / "wheels", root / "data"]


def test_split_and_join_round_trip(tmp_path: Path) -> None:
    sources = _fake_sources(tmp_path / "src")
    manifest = split(sources, tmp_path / "parts", part_bytes=100_000)

    parts = sorted((tmp_path / "parts").glob("bundle.*"))
    assert [p.name for p in parts] == [part["name"] for part in manifest["parts"]]
    assert len(parts) >= 4 and all(p.stat().st_size <= 100_000 for p in parts)
    for part in manifest["parts"]:
        data = (tmp_path / "parts" / part["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
    assert set(manifest["files"]) == {
        "wheels/fake-1.0-py3-none-any.whl",
        "data/b.txt",
        "data/deep/a.bin",
    }

    join(tmp_path / "parts", tmp_path / "into")
    for name in manifest["files"]:
        assert (tmp_path / "into" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert not (tmp_path / "into" / "bundle.tar").exists()


def test_join_names_every_missing_and_damaged_part(tmp_path: Path) -> None:
    split(_fake_sources(tmp_path / "src"), tmp_path / "parts", part_bytes=100_000)
    (tmp_path / "parts" / "bundle.001").unlink()
    damaged = tmp_path / "parts" / "bundle.002"
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])

    with pytest.raises(CarryError, match=r"missing bundle\.001; damaged .* bundle\.002"):
        check_parts(tmp_path / "parts")
    done = subprocess.run(
        [sys.executable, str(DEVICE / "split_wheels.py"), "join"]
        + ["--parts", str(tmp_path / "parts"), "--into", str(tmp_path / "into")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "bundle.001" in done.stderr and "bundle.002" in done.stderr
    assert not (tmp_path / "into").exists()  # nothing unpacked from a broken set


def test_a_new_split_removes_only_its_own_stale_parts(tmp_path: Path) -> None:
    sources = _fake_sources(tmp_path / "src")
    parts = tmp_path / "parts"
    assert len(split(sources, parts, part_bytes=50_000)["parts"]) >= 7
    (parts / "notes.txt").write_text("not the script's\n")

    manifest = split(sources, parts, part_bytes=200_000)

    assert sorted(p.name for p in parts.glob("bundle.*")) == ["bundle.000", "bundle.001"]
    assert len(manifest["parts"]) == 2
    assert (parts / "notes.txt").exists()
    join(parts, tmp_path / "into")  # the new manifest matches the parts left


def test_measure_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, str(DEVICE / "measure.py"), "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [*command, "--dry-run", "--imagenet", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none' / 'index.json'}: no such file; "
        ".device/data/cifar10-jpg.tar.gz: no such file"
    ]
    done = subprocess.run(
        [*command, "--seconds", "cifar=5"], capture_output=True, text=True, env=_env()
    )
    assert done.returncode != 0 and "--seconds cifar=5: unknown step" in done.stderr


@pytest.fixture(scope="module")
def carried(tmp_path_factory: pytest.TempPathFactory, cifar_jpegs) -> Path:
    """Parts as the device gets them: the ImageNet folder of 8 real sample images (one batch
    an epoch) and an archive of a few real CIFAR-10 JPEGs per class (4 train and 2 test); no
    wheels (DALI is installed here)."""
    root = tmp_path_factory.mktemp("carry")
    source = write_imagenet_dir(root / "imagenet", imagenet_jpegs(8), shard_size=5)
    data = root / "data"
    repeat_shards(source, data / "imagenet-repeat", "train", samples=8, repeats=1)
    folders = write_class_folders(root / "cifar", cifar_jpegs)
    tar_folder(folders, data / "cifar10-jpg.tar.gz")
    split([data], root / "parts", part_bytes=200_000)
    return root / "parts"


def test_run_sh_leaves_a_folder_it_did_not_write(tmp_path: Path, carried: Path) -> None:
    carry = tmp_path / "mine"
    carry.mkdir()
    (carry / "notes.txt").write_text("keep\n")
    env = {**_env(), "PARTS": str(carried), "CARRY": str(carry), "OUT": str(tmp_path / "out")}
    env["LOG"] = str(tmp_path / "log.txt")
    done = subprocess.run(
        ["bash", str(DEVICE / "run.sh"), "--dry-run"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {carry}: exists and was not written by run.sh (no .joined); "
        "choose another or remove it"
    ]
    assert [p.name for p in carry.iterdir()] == ["notes.txt"]


def _read(out: Path, number: int, step: str) -> dict:
    record = json.loads((out / f"{number:02d}-{step}.json").read_text())
    assert record["step"] == step and record["dry_run"] is True
    assert "--dry-run" in record["command"] and "--commit" in record["command"]
    environment = record["environment"]
    assert environment["device"] == "cpu" and environment["commit"] == "0123abc"
    assert environment["torch"] and environment["dali"] and environment["date"]
    assert record["sizes"]["imagenet_batch"] == 8
    return record


@pytest.mark.slow
def test_dry_run_writes_every_record(tmp_path: Path, carried: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "log.txt"
    env = {**_env(), "PARTS": str(carried), "CARRY": str(tmp_path / "carry"), "OUT": str(out)}
    env["LOG"] = str(log)
    command = ["bash", str(DEVICE / "run.sh"), "--dry-run", "--commit", "0123abc"]
    # The GPU changes what these stages run on; register and report (MLflow only) are the
    # ones tests/test_dvc_pipeline.py runs, and take a minute more here.
    stages = "params,prepare,preprocess,train,evaluate"
    done = subprocess.run(
        [*command, "--work", str(tmp_path / "work"), "--dvc-stages", stages],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    pipeline = _read(out, 1, "dali_pipeline")["figures"]
    assert pipeline["samples_per_epoch"] == 8 and len(pipeline["timed_epochs"]) == 2
    assert pipeline["output"]["shape"] == [8, 3, 224, 224]
    assert pipeline["output"]["channels_last"] and pipeline["images_per_s"] > 0

    training = _read(out, 2, "resnet50_training")["figures"]
    assert training["compiled"] is False and training["precision"] == "fp32"
    for source in ("synthetic", "dali"):
        assert training[source]["timed_steps"] == 2 and training[source]["images_per_s"] > 0
    assert training["dali_over_synthetic"] > 0

    recipe = _read(out, 3, "cifar_recipe")["figures"]
    assert recipe["finished"] and recipe["iterations"] == 4
    assert 0 <= recipe["test_error"] <= 100
    with tarfile.open(out / "resnet20.tar") as archive:
        names = set(archive.getnames())
    assert {"resnet20/history.json", "resnet20/model.pt"} <= names

    repro = _read(out, 4, "dvc_repro")["figures"]
    assert repro["all_stages_ok"], repro["stages"]
    assert [s["stage"] for s in repro["stages"]] == stages.split(",")
    assert all(s["seconds"] > 0 for s in repro["stages"])
    assert repro["metrics"]["evaluate"]["samples"] == 20  # the archive's 2 test images a class

    crops = _read(out, 5, "ten_crop_evaluation")["figures"]
    assert crops["samples"] == 8 and crops["crops_per_s"] > 0
    assert 0 <= crops["test_10crop_top1_error"] <= 100

    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == list(STEPS)  # no compiling on this CPU
    assert all(s["status"] == "ok" for s in summary["steps"])
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"{n:02d}-{step}.json" for n, step in enumerate(STEPS, 1)),
        "resnet20.tar",
        "summary.json",
    ]  # at most 8 files come back from the device
    text = log.read_text()
    assert "joined in" in text and "measure.py exit 0" in text


@pytest.mark.slow
def test_a_failed_step_gets_a_record_and_the_next_step_runs(tmp_path: Path, carried) -> None:
    carry = tmp_path / "carry"
    join(carried, carry)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(DEVICE / "measure.py"), "--dry-run", "--commit", "0123abc"]
        + ["--out", str(out), "--work", str(tmp_path / "work")]
        + ["--imagenet", str(carry / "data" / "imagenet-repeat")]
        + ["--cifar-archive", str(broken), "--only", "cifar_recipe,dali_pipeline"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 1
    failed = json.loads((out / "03-cifar_recipe.json").read_text())
    assert failed["status"].startswith("failed")
    assert any(str(broken) in line for line in failed["output_tail"])
    assert json.loads((out / "01-dali_pipeline.json").read_text())["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["cifar_recipe", "dali_pipeline"]
