"""The device check's sizes and time budgets: the GPU's, and the dry run's on this CPU."""

from __future__ import annotations

from dataclasses import dataclass

DVC_STAGES = ("params", "prepare", "preprocess", "train", "evaluate", "register", "report")


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: the GPU's sizes, or the dry run's (see ``measure.py``)."""

    imagenet_batch: int
    pipeline_epochs: int
    threads: int
    model: str  # ResNet-50 on the GPU
    precision: str  # bf16 (autocast) or fp32, for the ResNet-50 steps and the 10-crop test
    train_side: int  # the ResNet-50 steps' input side (the pipeline's 224 crops resized)
    warmup: int
    steps: int
    cifar_batch: int
    cifar_iterations: int
    cifar_milestones: tuple[int, int]
    cifar_precision: str
    dvc_overrides: tuple[str, ...]
    dvc_stages: tuple[str, ...]  # dvc.yaml's stages to run, in its order
    eval_batch: int


GPU = Sizes(
    imagenet_batch=256,
    pipeline_epochs=10,
    threads=8,
    model="resnet50",
    precision="bf16",
    train_side=224,
    warmup=30,
    steps=200,
    cifar_batch=128,
    cifar_iterations=64000,
    cifar_milestones=(32000, 48000),
    cifar_precision="fp32",  # faster than bf16 for ResNet-20 on the H200 (BENCHMARKS.md)
    dvc_overrides=("train.schedule.length=1000", "train.schedule.milestones=[500,750]"),
    dvc_stages=DVC_STAGES,
    eval_batch=256,
)
# Tiny sizes for this CPU: a few batches of a few images, a handful of steps, a few iterations.
DRY = Sizes(
    imagenet_batch=8,
    pipeline_epochs=2,
    threads=2,
    model="resnet18",
    # A ResNet-18 step of 8 images at 224x224 took 85-103 s in bf16 against 7 s in fp32 on the
    # 2-core EPYC VM (one probe, heavily loaded), so the dry run steps in fp32 on 64x64 inputs.
    precision="fp32",
    train_side=64,
    warmup=1,
    steps=2,
    cifar_batch=8,
    cifar_iterations=4,
    cifar_milestones=(2, 3),
    cifar_precision="fp32",
    dvc_overrides=(
        "train.schedule.length=4",
        "train.schedule.milestones=[2,3]",
        "train.batch_size=8",
        "evaluate.batch_size=8",
        "preprocess.cifar10.val_size=10",
        "report.response_images=10",
    ),
    dvc_stages=DVC_STAGES,
    eval_batch=8,
)
# Seconds per step. measure.py's deadline (500 s) plus the last step's grace (45 s) plus
# run.sh's join and install (~40 s, estimated) stay inside one 600-s device call.
# Estimates, not yet measured on the device: step 1 reads 10 epochs of 30k images in ~30 s at
# 10k img/s; step 2 is 2 x 230 steps of 256; step 3 is the 64k-iteration recipe (stopped and
# resumable at the budget); step 4 decodes 60k CIFAR JPEGs and has DVC hash them, then six
# stages of a few seconds to tens of seconds each.
BUDGETS = {
    "dali_pipeline": 35.0,
    "resnet50_training": 100.0,
    "cifar_recipe": 220.0,
    "dvc_repro": 110.0,
    "ten_crop_evaluation": 25.0,
    "resnet50_compiled": 150.0,  # whatever is left of the deadline: compile may not fit
}
STEPS = tuple(BUDGETS)
# The dry run stops on its tiny sizes, not its budgets: these only bound a hung step.
DRY_BUDGETS = {**dict.fromkeys(STEPS, 300.0), "dvc_repro": 900.0}
