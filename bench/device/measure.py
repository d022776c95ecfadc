"""The GPU device check (issue 20): DALI on the GPU, ResNet-50, the CIFAR recipe, dvc repro.

Runs the steps in order of value, each in its own process with its own time budget, and each
writes its JSON record to ``--out`` as soon as it ends (a step that crashes or overruns gets a
record saying so, and the next step runs), then ``summary.json``:

1. ``dali_pipeline``: the DALI ImageNet training pipeline alone (mixed decoder), images/s;
2. ``resnet50_training``: ResNet-50 SGD steps, bf16, channels_last, batch 256, on that
   pipeline and on synthetic batches on the GPU, eager;
3. ``cifar_recipe``: the paper's CIFAR-10 ResNet-20 recipe (64k iterations) through ``train()``,
   data on the GPU through DALI, CUDA graphs; the run folder as ``resnet20.tar`` for
   ``resnet import-run``;
4. ``dvc_repro``: the quick main job, ``dvc repro`` stage by stage on the GPU (skipped where
   DVC or MLflow do not import);
5. ``ten_crop_evaluation``: ``resnet evaluate``'s ImageNet centre- and 10-crop test on the GPU;
6. ``resnet50_compiled``: step 2 with ``torch.compile``, with what is left of the deadline.

On the device (``run.sh`` installs DALI first)::

    python3 bench/device/measure.py --out "$OUT" --imagenet /tmp/carry/data/imagenet-repeat \\
        --cifar-archive /tmp/carry/data/cifar10-jpg.tar.gz --commit <sha>

``--dry-run`` runs the same steps on this CPU with DALI's CPU-only mode and tiny sizes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sizes import BUDGETS, DRY, DRY_BUDGETS, DVC_STAGES, GPU, STEPS, Sizes

# Beyond its budget, a step's process is killed after this long (imports, pipeline builds).
GRACE = 45.0


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str, commit: str) -> dict[str, Any]:
    """What produced a record: machine, GPU, driver, versions, commit."""
    import torch

    gpu = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    try:
        import nvidia.dali as dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "nvidia_smi": gpu,
        "driver": gpu.split(", ")[1] if gpu and gpu.count(", ") >= 2 else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "dali": dali_version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record atomically: a killed step leaves the old file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(temporary, path)


def record_path(out: Path, step: str) -> Path:
    return out / f"{STEPS.index(step) + 1:02d}-{step}.json"


def pack_run(run: Path, target: Path) -> None:
    """``target`` (a tar): the run folder's files for ``resnet import-run``; the checkpoint too
    if the run did not finish, for ``resnet train --resume``."""
    names = ["history.json", "metrics.json", "model.pt"]
    if not (run / "model.pt").exists():
        names.append("checkpoint.pt")
    temporary = target.with_name(f".{target.name}.tmp")
    with tarfile.open(temporary, "w") as archive:
        for name in names:
            if (run / name).exists():
                archive.add(run / name, arcname=f"{run.name}/{name}")
    os.replace(temporary, target)


def run_step(args: argparse.Namespace, sizes: Sizes) -> int:
    """Child mode: one step, its record written when it ends."""
    import steps as measurements
    import torch

    device = torch.device(args.device)
    work = args.work / args.step
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DEVICE_CHECK_COMMIT"] = args.commit
    budget = args.budget
    inputs = {
        "dali_pipeline": args.imagenet,
        "resnet50_training": args.imagenet,
        "cifar_recipe": args.cifar_archive,
        "dvc_repro": args.cifar_archive,
        "ten_crop_evaluation": args.imagenet,
        "resnet50_compiled": args.imagenet,
    }
    function = getattr(measurements, args.step)
    started = time.perf_counter()
    figures = function(sizes, device, inputs[args.step], work, budget)
    record = {
        "step": args.step,
        "status": "skipped" if "skipped" in figures else "ok",
        "seconds": time.perf_counter() - started,
        "budget_seconds": budget,
        "dry_run": args.dry_run,
        "command": args.command or shlex.join([sys.executable, *sys.argv]),
        "step_command": shlex.join([sys.executable, *sys.argv]),
        "sizes": asdict(sizes),
        "environment": environment(args.device, args.commit),
        "figures": figures,
    }
    write_record(record_path(args.out, args.step), record)
    if args.step == "cifar_recipe":
        pack_run(work / "resnet20", args.out / "resnet20.tar")
    return 0


def _stream(process: subprocess.Popen, tail: collections.deque) -> None:
    for line in process.stdout:
        print(line, end="", flush=True)
        tail.append(line.rstrip())


def spawn_step(args: argparse.Namespace, step: str, budget: float, command: str) -> dict:
    """Run one step in its own process; the summary entry (its record, or why there is none)."""
    child = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--step",
        step,
        "--budget",
        f"{budget:.0f}",
        "--command",
        command,
        *args.passthrough,
    ]
    print(f"== {step} (budget {budget:.0f} s)", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=30)
    path = record_path(args.out, step)
    path.unlink(missing_ok=True)  # this run's own record, from an earlier try
    started = time.perf_counter()
    # Its own process group: a step's children (dvc, DALI's workers) go down with it.
    process = subprocess.Popen(
        child,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reader = threading.Thread(target=_stream, args=(process, tail), daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=budget + GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        returncode = None
    reader.join(timeout=5)
    seconds = time.perf_counter() - started
    if path.exists():
        record = json.loads(path.read_text())
        entry = {"step": step, "status": record["status"], "seconds": seconds}
        entry["headline"] = headline(step, record["figures"])
        return entry
    status = "timeout" if returncode is None else f"failed (exit {returncode})"
    record = {
        "step": step,
        "status": status,
        "seconds": seconds,
        "budget_seconds": budget,
        "dry_run": args.dry_run,
        "command": command,
        "output_tail": list(tail),
    }
    write_record(path, record)
    return {"step": step, "status": status, "seconds": seconds}


def headline(step: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The figure or two of a step that the summary shows."""
    keys = {
        "dali_pipeline": ["images_per_s"],
        "resnet50_training": ["dali_over_synthetic"],
        "resnet50_compiled": ["dali_over_synthetic"],
        "cifar_recipe": ["finished", "iterations", "train_wall_seconds", "test_error"],
        "dvc_repro": ["all_stages_ok", "skipped"],
        "ten_crop_evaluation": ["crops_per_s"],
    }[step]
    found = {key: figures[key] for key in keys if key in figures}
    for source in ("synthetic", "dali"):
        rate = figures.get(source)
        if isinstance(rate, dict) and rate.get("images_per_s"):
            found[f"{source}_images_per_s"] = rate["images_per_s"]
    if step == "dvc_repro":
        found["stage_seconds"] = {s["stage"]: s.get("seconds") for s in figures.get("stages", [])}
    return found


def preflight(args: argparse.Namespace) -> None:
    """Fail at once, in one line, if the GPU, DALI or the carried data are not there."""
    problems = [
        f"{path}: no such file"
        for path in (args.imagenet / "index.json", args.cifar_archive)
        if not path.exists()
    ]
    if problems:  # before the imports, which take seconds
        raise SystemExit(f"error: {'; '.join(problems)}")
    import torch

    if not args.dry_run:
        if _run(["nvidia-smi", "-L"]) is None:
            problems.append("nvidia-smi does not answer")
        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA device")
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as error:  # a wheel for another CUDA or platform fails in many ways
        problems.append(f"DALI does not import ({type(error).__name__}: {error})")
    if problems:
        raise SystemExit(f"error: {'; '.join(problems)}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="this CPU, DALI CPU mode, tiny")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".device/out")))
    parser.add_argument("--work", type=Path, default=Path(".device/work"))
    parser.add_argument("--imagenet", type=Path, default=Path(".device/data/imagenet-repeat"))
    parser.add_argument(
        "--cifar-archive", type=Path, default=Path(".device/data/cifar10-jpg.tar.gz")
    )
    parser.add_argument("--commit", default="unknown", help="the git commit (the copy has no .git)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated steps, in order (default: all; with --dry-run all but "
        "resnet50_compiled, since compiling on this CPU takes minutes)",
    )
    parser.add_argument(
        "--seconds",
        action="append",
        default=[],
        metavar="STEP=S",
        help="a step's budget in seconds (repeatable)",
    )
    parser.add_argument("--steps", type=int, help="timed ResNet-50 steps per variant")
    parser.add_argument(
        "--dvc-stages", default=None, help=f"comma-separated (default {','.join(DVC_STAGES)})"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds for all steps together (default 500; 1800 with --dry-run)",
    )
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.deadline = args.deadline or (1800.0 if args.dry_run else 500.0)
    if args.only is None:
        args.only = ",".join(s for s in STEPS if not (args.dry_run and s == "resnet50_compiled"))
    # What each step's process is given again (everything but the driver's own options).
    args.passthrough = [
        *(["--dry-run"] if args.dry_run else []),
        f"--out={args.out}",
        f"--work={args.work}",
        f"--imagenet={args.imagenet}",
        f"--cifar-archive={args.cifar_archive}",
        f"--commit={args.commit}",
        f"--device={args.device}",
        *([f"--steps={args.steps}"] if args.steps else []),
        *([f"--dvc-stages={args.dvc_stages}"] if args.dvc_stages else []),
    ]
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    sizes = DRY if args.dry_run else GPU
    changes: dict[str, Any] = {}
    if args.steps:
        changes["steps"] = args.steps
    if args.dvc_stages:
        stages = tuple(s.strip() for s in args.dvc_stages.split(",") if s.strip())
        unknown = [s for s in stages if s not in DVC_STAGES]
        if unknown:
            raise SystemExit(
                f"error: --dvc-stages: unknown stages {unknown} (dvc.yaml has {DVC_STAGES})"
            )
        changes["dvc_stages"] = stages
    return Sizes(**{**asdict(sizes), **changes}) if changes else sizes


def budgets_of(args: argparse.Namespace) -> dict[str, float]:
    budgets = dict(DRY_BUDGETS if args.dry_run else BUDGETS)
    for item in args.seconds:
        step, _, value = item.partition("=")
        if step not in budgets:
            raise SystemExit(f"error: --seconds {item}: unknown step (known: {', '.join(STEPS)})")
        try:
            budgets[step] = float(value)
        except ValueError:
            raise SystemExit(f"error: --seconds {item}: not a number of seconds") from None
    return budgets


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = sizes_of(args)
    if args.step:
        return run_step(args, sizes)
    budgets = budgets_of(args)
    chosen = [step.strip() for step in args.only.split(",") if step.strip()]
    unknown = [step for step in chosen if step not in STEPS]
    if unknown:
        raise SystemExit(f"error: --only: unknown steps {unknown} (known: {', '.join(STEPS)})")
    command = shlex.join([sys.executable, *sys.argv])
    args.out.mkdir(parents=True, exist_ok=True)
    preflight(args)
    env = environment(args.device, args.commit)
    print(json.dumps(env), flush=True)
    start = time.perf_counter()
    summary = {"command": command, "dry_run": args.dry_run, "environment": env, "steps": []}
    for step in chosen:
        left = args.deadline - (time.perf_counter() - start)
        if left < 5:
            summary["steps"].append({"step": step, "status": "not run (deadline)"})
            continue
        budget = min(budgets[step], left)
        summary["steps"].append(spawn_step(args, step, budget, command))
        summary["seconds"] = time.perf_counter() - start
        write_record(args.out / "summary.json", summary)  # after every step: a kill keeps it
    write_record(args.out / "summary.json", summary)
    print(json.dumps(summary["steps"], indent=1), flush=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
