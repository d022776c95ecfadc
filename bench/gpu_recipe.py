"""The paper's CIFAR-10 recipe on one lent GPU, with the project's ``train()`` but no MLflow.

For a machine that has torch and a short lease but not this project's tracking stack (the
device machine of BENCHMARKS.md). In one command it:

1. prepares and preprocesses CIFAR-10 from an archive (the Table 6 recipe: all 50k training
   images, tested on the 10k after every epoch),
2. times a training step of each model on the GPU, bf16 autocast against fp32, and takes the
   faster for the runs (both are the paper's recipe; only the arithmetic differs),
3. trains the models side by side, one process each, until they finish or the deadline, when
   they get SIGTERM and save a checkpoint that ``resnet train --resume`` continues,
4. packs each run (history.json, metrics.json, model.pt, checkpoint.pt, log) into
   ``<out>/<model>.tar``; ``resnet import-run`` logs one to MLflow as a run of a grid.

    python bench/gpu_recipe.py --archive .device/cifar10-jpg.tar.gz --out "$OUT" \
        --deadline 545 --steps 0 --precision fp32 --set train.cuda_graphs=true \
        resnet56 resnet20

A run stopped at the deadline continues in a later lease with ``--resume-from DIR`` (DIR
holding ``<model>/checkpoint.pt``, unpacked from the tar).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from resnet_mlops.data.loaders import LoaderParams  # noqa: E402
from resnet_mlops.data.prepare import PrepareParams, prepare  # noqa: E402
from resnet_mlops.data.preprocess import PreprocessParams, preprocess  # noqa: E402
from resnet_mlops.engine.artifact import model_kwargs  # noqa: E402
from resnet_mlops.models import build_model  # noqa: E402
from resnet_mlops.params.base import load_sections  # noqa: E402
from resnet_mlops.params.train import TrainParams  # noqa: E402
from resnet_mlops.stages.train import data_version  # noqa: E402
from resnet_mlops.train.loop import Interrupted, TrainJob, TrainPaths, train  # noqa: E402

PARAMS = Path("params.yaml")
RECIPE = ["dataset=cifar10", "preprocess.cifar10.val_size=0"]  # studies.yaml's cifar10 recipe


def prepare_data(archive: Path, work: Path) -> Path:
    """CIFAR-10 from ``archive`` through the prepare and preprocess stages; the data folder."""
    overrides = [*RECIPE, f"prepare.cifar10.source={archive.resolve()}"]
    _, sections, _ = load_sections(PARAMS, {"prepare": PrepareParams}, overrides)
    prepare("cifar10", sections["prepare"], work / "prepared", work / "prepare.json", work)
    _, sections, _ = load_sections(PARAMS, {"preprocess": PreprocessParams}, overrides)
    data = work / "preprocessed"
    preprocess("cifar10", sections["preprocess"], work / "prepared", data, work / "pre.json")
    return data


def time_step(
    model_name: str, dtype: torch.dtype | None, device: torch.device, steps: int = 100
) -> float:
    """Milliseconds per training step (forward, backward, SGD) on a synthetic batch of 128."""
    model = build_model(model_name, **model_kwargs(model_name, "default", False, 10))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(128, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (128,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return 1000 * (time.perf_counter() - started) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def child(args: argparse.Namespace) -> int:
    """One training run: ``train()`` with the recipe and this run's overrides."""
    overrides = [
        *RECIPE,
        f"train.model={args.model}",
        f"train.precision={args.precision}",
        f"train.device={args.device}",
        "train.log_every=2000",
        "loader.backend=torch",
        f"loader.num_threads={args.threads}",
        *args.set,
    ]
    dataset, sections, tree = load_sections(
        PARAMS, {"train": TrainParams, "loader": LoaderParams}, overrides
    )
    run = Path(args.run_dir)
    paths = TrainPaths(
        run / "checkpoint.pt", run / "model.pt", run / "metrics.json", run / "history.json"
    )
    provenance = {
        "device": device_name(torch.device(args.device)),
        "torch": str(torch.__version__),
        "data_version": data_version(Path(args.data)),
        "mlflow.source.git.commit": args.commit,
    }
    started = time.perf_counter()
    try:
        job = TrainJob(
            dataset,
            sections["train"],
            sections["loader"],
            Path(args.data),
            paths,
            config=tree,
            provenance=provenance,
        )
        train(job, resume=paths.checkpoint.exists())
    except Interrupted as stopped:
        print(f"{args.model}: {stopped}", flush=True)
    (run / "wall.json").write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


def pack(run: Path, out: Path, model: str) -> None:
    """``<out>/<model>.tar``: the run's outputs, its checkpoint only if it did not finish."""
    names = ["history.json", "metrics.json", "model.pt", "wall.json", "train.log"]
    if not (run / "model.pt").exists():
        names.append("checkpoint.pt")
    with tarfile.open(out / f"{model}.tar", "w") as archive:
        for name in names:
            if (run / name).exists():
                archive.add(run / name, arcname=f"{model}/{name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet56", "resnet20"])
    parser.add_argument("--archive", type=Path, default=Path(".device/cifar10-jpg.tar.gz"))
    parser.add_argument("--work", type=Path, default=Path(".device/work"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".device/out")))
    parser.add_argument(
        "--deadline",
        type=float,
        default=540.0,
        help="seconds after start when unfinished runs are stopped",
    )
    parser.add_argument("--threads", type=int, default=5, help="DataLoader workers per run")
    parser.add_argument(
        "--precision", default="auto", help="auto: the faster of bf16 and fp32 for the first model"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--commit",
        default="unknown",
        help="the git commit of this code (the device copy has no .git)",
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="timed steps per variant; 0 skips the timing"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params override for the runs (repeatable)",
    )
    parser.add_argument(
        "--resume-from",
        type=Path,
        metavar="DIR",
        help="continue the runs whose DIR/<model>/checkpoint.pt exists "
        "(a run stopped at an earlier deadline)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    print(f"{device_name(device)}, torch {torch.__version__}", flush=True)
    data = prepare_data(args.archive, args.work)
    print(f"data ready in {time.perf_counter() - start:.0f} s", flush=True)

    torch.backends.cudnn.benchmark = True
    timings = {}
    for model in args.models if args.steps else []:
        for label, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
            timings[f"{model} {label}"] = time_step(model, dtype, device, args.steps)
            print(
                f"step {model} {label}: {timings[f'{model} {label}']:.2f} ms "
                f"({128e3 / timings[f'{model} {label}']:,.0f} img/s)",
                flush=True,
            )
    precision = args.precision
    if precision == "auto" and timings:
        first = args.models[0]
        precision = "bf16" if timings[f"{first} bf16"] <= timings[f"{first} fp32"] else "fp32"
    (args.out / "steps.json").write_text(
        json.dumps({"ms_per_step": timings, "precision": precision}, indent=1)
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()

    children = {}
    for model in args.models:
        run = args.work / "runs" / model
        run.mkdir(parents=True, exist_ok=True)
        for stale in ("checkpoint.pt", "model.pt"):  # a reused --work: pack() goes by these
            (run / stale).unlink(missing_ok=True)
        if args.resume_from and (args.resume_from / model / "checkpoint.pt").exists():
            shutil.copy(args.resume_from / model / "checkpoint.pt", run / "checkpoint.pt")
            print(f"resuming {model} from {args.resume_from / model}", flush=True)
        log = open(run / "train.log", "w")  # noqa: SIM115 (closed when the child ends)
        command = [
            sys.executable,
            __file__,
            "--child",
            "--model",
            model,
            "--run-dir",
            str(run),
            "--data",
            str(data),
            "--precision",
            precision,
            "--threads",
            str(args.threads),
            "--commit",
            args.commit,
            "--device",
            args.device,
            *(f"--set={item}" for item in args.set),
        ]
        children[model] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), run)
        print(f"started {model} ({precision})", flush=True)

    stopped = False
    while any(p.poll() is None for p, _ in children.values()):
        if not stopped and time.perf_counter() - start > args.deadline:
            for model, (process, _) in children.items():
                if process.poll() is None:
                    print(f"deadline: stopping {model}", flush=True)
                    process.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(2)
    for model, (process, run) in children.items():
        tail = (run / "train.log").read_text().strip().splitlines()[-3:]
        print(f"{model}: exit {process.returncode}", *tail, sep="\n  ", flush=True)
        pack(run, args.out, model)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
