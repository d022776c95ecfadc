"""CPU training throughput: the trainer's settings against a plain fp32 eager loop.

Both run in this process, one after the other, on the same model, batch and threads, on
in-memory synthetic batches (so the figure is the training step, not the input pipeline).

    python bench/train_cpu.py --model resnet20 --batch 128 --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch
import torch.nn.functional as F

from resnet_mlops.models import build_model, input_size


def measure(
    model_name: str,
    batch: int,
    steps: int,
    warmup: int,
    *,
    bf16: bool,
    channels_last: bool,
    compile: bool,
) -> float:
    """Training images per second for one configuration."""
    torch.manual_seed(0)
    model = build_model(model_name)
    size = input_size(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    classes = model.fc.out_features
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.randint(0, classes, (batch,))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with cast:
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    configs = {
        "fp32 eager (baseline)": dict(bf16=False, channels_last=False, compile=False),
        "fp32 + channels_last": dict(bf16=False, channels_last=True, compile=False),
        "bf16 autocast + channels_last (trainer default)": dict(
            bf16=True, channels_last=True, compile=False
        ),
    }
    if args.compile:
        configs["bf16 + channels_last + torch.compile"] = dict(
            bf16=True, channels_last=True, compile=True
        )
    baseline = None
    for name, config in configs.items():
        rate = measure(args.model, args.batch, args.steps, args.warmup, **config)
        baseline = baseline or rate
        print(
            f"{args.model} batch {args.batch} {name:50s} {rate:8.0f} img/s  {rate / baseline:4.2f}x"
        )


if __name__ == "__main__":
    main()
