"""The device check's measurements, one function per step, each within a time budget.

Each takes the run's :class:`Sizes` (the GPU's, or the dry run's tiny ones), the device, a
work folder and a budget in seconds, and returns the figures of its JSON record. The GPU and
CPU paths are the same code: the project's own builders put DALI on the GPU (``mixed``
decoder, GPU operators) when the device is CUDA and run DALI's CPU-only mode otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sizes import Sizes

from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader
from resnet_mlops.models import build_model
from resnet_mlops.params.base import apply_overrides, load_sections, read_yaml

REPO = Path(__file__).resolve().parents[2]
# What `dvc repro` needs of the project (tests/support/project.py's PROJECT_FILES) besides src/.
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock times it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _imagenet_loader(data: Path, sizes: Sizes, device: torch.device, **kwargs: Any):
    params = LoaderParams(backend="dali", num_threads=sizes.threads)
    return build_loader(
        LoaderSpec(
            "imagenet",
            "train",
            data,
            sizes.imagenet_batch,
            params=params,
            memory_format="channels_last",
            device=device,
            **kwargs,
        )
    )


def dali_pipeline(
    sizes: Sizes, device: torch.device, data: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 1: the DALI ImageNet training pipeline alone, images/s per epoch.

    Random-resized crop 224, flip, normalise, channels_last, the batch on ``device``. The first
    epoch (pipeline build, nvJPEG start-up, page cache) is timed apart from the others.
    """
    started = time.perf_counter()
    loader = _imagenet_loader(data, sizes, device)
    epochs = []
    for epoch in range(sizes.pipeline_epochs + 1):
        count, start = 0, time.perf_counter()
        for batch in loader:
            count += len(batch[1])
        synchronize(device)
        seconds = time.perf_counter() - start
        epochs.append({"images": count, "seconds": seconds, "images_per_s": count / seconds})
        if epoch and time.perf_counter() - started > budget:
            break
    images = batch[0]
    timed = epochs[1:]
    rate = sum(e["images"] for e in timed) / sum(e["seconds"] for e in timed) if timed else None
    return {
        "batch_size": sizes.imagenet_batch,
        "dali_threads": sizes.threads,
        "output": {
            "shape": list(images.shape),
            "dtype": str(images.dtype),
            "device": str(images.device),
            "channels_last": images.is_contiguous(memory_format=torch.channels_last),
        },
        "samples_per_epoch": loader.num_samples,
        "first_epoch": epochs[0],
        "timed_epochs": timed,
        "images_per_s": rate,
        "images_per_s_median_epoch": statistics.median(e["images_per_s"] for e in timed)
        if timed
        else None,
    }


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def _train_rate(
    model: torch.nn.Module,
    batches: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    sizes: Sizes,
    device: torch.device,
    deadline: float,
) -> dict[str, Any]:
    """Images/s of SGD steps (``sizes.precision``, channels_last) after ``sizes.warmup`` steps."""
    side = sizes.train_side
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> int:
        images, labels = batches()
        images = images.to(device, non_blocking=True)
        if images.shape[-1] != side:  # the dry run's small inputs
            images = F.interpolate(images, size=(side, side), mode="bilinear")
        images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sizes.precision == "bf16"):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(labels)

    start = time.perf_counter()
    for _ in range(sizes.warmup):
        step()
    synchronize(device)
    warm = time.perf_counter()
    count = steps = 0
    while steps < sizes.steps and time.perf_counter() < deadline:
        count += step()
        steps += 1
    synchronize(device)
    seconds = time.perf_counter() - warm
    return {
        "warmup_steps": sizes.warmup,
        "warmup_seconds": warm - start,
        "timed_steps": steps,
        "seconds": seconds,
        "images_per_s": count / seconds if steps else None,
        "ms_per_step": 1000 * seconds / steps if steps else None,
    }


def _resnet50(
    sizes: Sizes, device: torch.device, data: Path, budget: float, compiled: bool
) -> dict[str, Any]:
    """ResNet-50 steps on synthetic batches on the device, then on the DALI pipeline: one
    model (compiled once, if ``compiled``), each source warmed up and timed in turn."""
    deadline = time.perf_counter() + budget
    classes = len(json.loads((data / "index.json").read_text())["classes"])
    torch.backends.cudnn.benchmark = True
    batch, side = sizes.imagenet_batch, sizes.train_side
    synthetic = (
        torch.randn(batch, 3, side, side, device=device).contiguous(
            memory_format=torch.channels_last
        ),
        torch.randint(0, classes, (batch,), device=device),
    )
    loader_batches = _endless(_imagenet_loader(data, sizes, device))
    torch.manual_seed(0)
    model = build_model(sizes.model, num_classes=classes)
    model = model.to(device, memory_format=torch.channels_last).train()
    net = torch.compile(model) if compiled else model
    results: dict[str, Any] = {
        "model": sizes.model,
        "compiled": compiled,
        "batch_size": batch,
        "precision": sizes.precision,
        "input_side": side,
        "classes": classes,
    }
    for source, batches in (
        ("synthetic", lambda: synthetic),
        ("dali", lambda: next(loader_batches)),
    ):
        results[source] = _train_rate(net, batches, sizes, device, deadline)
    real, ideal = results["dali"]["images_per_s"], results["synthetic"]["images_per_s"]
    if real and ideal:
        results["dali_over_synthetic"] = real / ideal
    return results


def resnet50_training(
    sizes: Sizes, device: torch.device, data: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 2: ResNet-50 SGD steps, eager, on synthetic batches on the device and on the DALI
    pipeline; bf16 autocast (the GPU's sizes), channels_last. Real within 10% of synthetic
    means the loader is not the bottleneck."""
    return _resnet50(sizes, device, data, budget, compiled=False)


def resnet50_compiled(
    sizes: Sizes, device: torch.device, data: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 6: step 2 with ``torch.compile``; last, since compiling may not fit the lease
    (the first warm-up step compiles)."""
    return _resnet50(sizes, device, data, budget, compiled=True)


def prepare_cifar10(archive: Path, work: Path, val_size: int = 0) -> Path:
    """CIFAR-10 from ``archive`` through the project's prepare and preprocess stages."""
    from resnet_mlops.data.prepare import PrepareParams, prepare
    from resnet_mlops.data.preprocess import PreprocessParams, preprocess

    overrides = [
        "dataset=cifar10",
        f"preprocess.cifar10.val_size={val_size}",
        f"prepare.cifar10.source={archive.resolve()}",
    ]
    params = REPO / "params.yaml"
    _, sections, _ = load_sections(params, {"prepare": PrepareParams}, overrides)
    prepare("cifar10", sections["prepare"], work / "prepared", work / "prepare.json", work)
    _, sections, _ = load_sections(params, {"preprocess": PreprocessParams}, overrides)
    data = work / "preprocessed"
    preprocess("cifar10", sections["preprocess"], work / "prepared", data, work / "pre.json")
    return data


def cifar_recipe(
    sizes: Sizes, device: torch.device, archive: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 3: the paper's CIFAR-10 ResNet-20 recipe through the project's ``train()``.

    All 50k training images (Table 6), tested on the 10k after every epoch; the arrays on the
    device through the DALI pipeline; CUDA graphs. At the budget the run gets SIGTERM, which
    ``train()`` answers with a checkpoint that ``resnet train --resume`` continues.
    """
    from resnet_mlops.params.train import TrainParams
    from resnet_mlops.stages.train import data_version
    from resnet_mlops.train.loop import Interrupted, TrainJob, TrainPaths, train

    started = time.perf_counter()
    data = prepare_cifar10(archive, work / "cifar10")
    prepared = time.perf_counter() - started
    first, second = sizes.cifar_milestones
    overrides = [
        "dataset=cifar10",
        "preprocess.cifar10.val_size=0",
        "train.model=resnet20",
        f"train.batch_size={sizes.cifar_batch}",
        f"train.device={device}",
        f"train.precision={sizes.cifar_precision}",
        "train.cuda_graphs=true",
        f"train.schedule.length={sizes.cifar_iterations}",
        f"train.schedule.milestones=[{first},{second}]",
        "train.log_every=2000",
        "loader.backend=dali",
        f"loader.num_threads={sizes.threads}",
    ]
    dataset, sections, tree = load_sections(
        REPO / "params.yaml", {"train": TrainParams, "loader": LoaderParams}, overrides
    )
    run = work / "resnet20"
    run.mkdir(parents=True, exist_ok=True)
    paths = TrainPaths(
        run / "checkpoint.pt", run / "model.pt", run / "metrics.json", run / "history.json"
    )
    provenance = {
        "device": device_name(device),
        "torch": str(torch.__version__),
        "data_version": data_version(data),
        "mlflow.source.git.commit": os.environ.get("DEVICE_CHECK_COMMIT", "unknown"),
    }
    left = max(budget - prepared, 1.0)
    # train() saves a checkpoint and raises Interrupted on SIGTERM; a timer sends it.
    timer = threading.Timer(left, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    begun, stopped = time.perf_counter(), None
    # A run stopped at an earlier call's budget continues (the machine keeps the work folder
    # while it stays warm): the record then holds this call's part of the wall time.
    resumed = paths.checkpoint.exists() and not paths.model.exists()
    if paths.model.exists():
        for name in ("model.pt", "metrics.json", "history.json"):
            (run / name).unlink()  # a finished run of an earlier call: this step's own output
    try:
        job = TrainJob(
            dataset,
            sections["train"],
            sections["loader"],
            data,
            paths,
            config=tree,
            provenance=provenance,
        )
        result = train(job, resume=resumed)
        history = result.history
    except Interrupted as error:
        stopped = str(error)
        history = json.loads(paths.history.read_text()) if paths.history.exists() else []
    finally:
        timer.cancel()
    wall = time.perf_counter() - begun
    last = history[-1] if history else {}
    rates = [record["images_per_second"] for record in history[1:]] or [
        record["images_per_second"] for record in history
    ]
    return {
        "overrides": overrides,
        "prepare_seconds": prepared,
        "train_wall_seconds": wall,
        "finished": stopped is None,
        "resumed": resumed,
        "stopped": stopped,
        "iterations": int(last.get("iteration", 0)),
        "iterations_planned": sizes.cifar_iterations,
        "epochs": len(history),
        "test_error": last.get("val_error"),
        "train_error": last.get("train_error"),
        "images_per_s_median_epoch": statistics.median(rates) if rates else None,
        "run_dir": str(run),
    }


def _resnet_on_path(env: dict[str, str], bin_dir: Path) -> None:
    """Put a ``resnet`` command on PATH if none is installed (the device copy has no install)."""
    if shutil.which("resnet", path=env["PATH"]):
        return
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "resnet"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m resnet_mlops.cli "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"


def dvc_repro(
    sizes: Sizes, device: torch.device, archive: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 4: the quick variant of the main job, ``dvc repro`` stage by stage, timed.

    A copy of the project (dvc.yaml, params.yaml with the quick variant's values, src/), DVC
    without Git (the device copy has none), MLflow's embedded store in the copy. Each stage is
    ``dvc repro --single-item <stage>`` in the pipeline's order, so each has its own time.
    """
    missing = [name for name in ("dvc", "mlflow") if shutil.which(name) is None and not _has(name)]
    if missing:
        return {"skipped": f"not importable here: {', '.join(missing)}"}
    deadline = time.perf_counter() + budget
    project = work / "project"
    if project.exists():
        shutil.rmtree(project)  # this step's own copy from an earlier try
    for name in PROJECT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, project / name)
    shutil.copytree(
        REPO / "src" / "resnet_mlops",
        project / "src" / "resnet_mlops",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (project / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    overrides = [
        "dataset=cifar10",
        f"prepare.cifar10.source={archive.resolve()}",
        f"train.device={device}",
        f"evaluate.device={device}",
        "loader.backend=dali",
        f"loader.num_threads={sizes.threads}",
        *sizes.dvc_overrides,
    ]
    import yaml

    tree = apply_overrides(read_yaml(project / "params.yaml"), overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(project / "src"), env.get("PYTHONPATH", "")])
    _resnet_on_path(env, work / "bin")
    dvc = [sys.executable, "-m", "dvc"]
    stages = []
    for stage in sizes.dvc_stages:
        left = deadline - time.perf_counter()
        if left < 1:
            stages.append({"stage": stage, "skipped": "out of the step's budget"})
            continue
        start = time.perf_counter()
        rc, output = _run_group([*dvc, "repro", "--single-item", stage], project, env, left)
        record = {"stage": stage, "seconds": time.perf_counter() - start, "returncode": rc}
        if rc != 0:
            record["output_tail"] = output.strip().splitlines()[-15:]
        stages.append(record)
        if rc != 0:
            break
    metrics = {}
    for name in ("train", "evaluate"):
        path = project / "metrics" / f"{name}.json"
        if path.exists():
            metrics[name] = json.loads(path.read_text())
    return {
        "overrides": overrides,
        "stages": stages,
        "all_stages_ok": len(stages) == len(sizes.dvc_stages)
        and all(s.get("returncode") == 0 for s in stages),
        "metrics": metrics,
    }


def _run_group(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int | None, str]:
    """Run ``command``; at ``timeout`` kill its whole process group (dvc's ``resnet`` too).

    Returns the exit code (None when it timed out) and the output.
    """
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, f"{output}\ntimed out ({timeout:.0f} s)"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def ten_crop_evaluation(
    sizes: Sizes, device: torch.device, data: Path, work: Path, budget: float
) -> dict[str, Any]:
    """Step 5: ``resnet evaluate``'s ImageNet protocol (centre crop, then 10 crops) on the device.

    The model is an untrained ResNet-50 written as a model file: the figures are the speed of
    the evaluation path and that it runs, not an accuracy.
    """
    from resnet_mlops.engine.artifact import model_kwargs, save_model
    from resnet_mlops.stages.evaluate import EvalPaths, EvaluateParams, evaluate

    index = json.loads((data / "index.json").read_text())
    classes = list(index["classes"])
    torch.manual_seed(0)
    kwargs = model_kwargs(sizes.model, "default", False, len(classes))
    model = build_model(sizes.model, **kwargs)
    model_path = work / "model.pt"
    save_model(
        model_path,
        model,
        name=sizes.model,
        kwargs=kwargs,
        preprocessing={"dataset": "imagenet", "input_size": 224, "classes": classes},
        provenance={},
        metrics={},
        config={"train": {"channels_last": True, "precision": sizes.precision}},
    )
    params = EvaluateParams(
        split="val", batch_size=sizes.eval_batch, ten_crop=True, device=str(device)
    )
    paths = EvalPaths(work / "evaluate.json", work / "confusion.csv", work / "confusion.png")
    loader = LoaderParams(backend="dali", num_threads=sizes.threads)
    start = time.perf_counter()
    metrics = evaluate("imagenet", params, loader, model_path, data, paths)
    seconds = time.perf_counter() - start
    samples = int(metrics["samples"])
    return {
        "model": sizes.model,
        "batch_size": sizes.eval_batch,
        "samples": samples,
        "seconds": seconds,
        "crops_per_s": samples * 11 / seconds,  # one centre crop and ten crops per image
        "test_top1_error": metrics.get("test_top1_error"),
        "test_10crop_top1_error": metrics.get("test_10crop_top1_error"),
        "budget_seconds": budget,
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
