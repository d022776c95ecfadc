"""Where and how training runs: device, precision, seeds, and torchrun's process group."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from resnet_mlops.errors import ConfigError
from resnet_mlops.params.train import Precision


@dataclass(frozen=True)
class Runtime:
    """This process's place in a (possibly distributed) run."""

    device: torch.device
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, tracks and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str) -> Runtime:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1) and pick a device.

    NCCL on GPUs, gloo on CPUs. ``device='auto'`` takes this rank's GPU if there is one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        if torch_device.index is None:  # plain "cuda": this rank's GPU
            torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return Runtime(torch_device, rank, world_size, local_rank)


def teardown_runtime(runtime: Runtime) -> None:
    """Leave the process group, if this process joined one."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32).

    ``auto``: bf16 on CPUs with AVX-512 (bf16 and AMX kernels in oneDNN) and on GPUs that
    support it; fp16 on older GPUs; fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if "AVX512" in capability else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask torch for reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """Every random generator's state, for a checkpoint (tensors and plain types only)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": numpy_state["state"]["pos"],
            },
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        "key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
        "pos": state["numpy"]["state"]["pos"],
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        # One state per GPU of the machine that saved it; this one may have more or fewer.
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def all_reduce_sum(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum a tensor over the ranks (a no-op on one process)."""
    if runtime.distributed:
        values = values.to(runtime.device)
        dist.all_reduce(values)
    return values


def device_problem(device: str) -> str | None:
    """Why ``device`` (``auto | cpu | cuda | cuda:N``) cannot be used here, or None.

    Checked when a command starts, not in the params schema: the same params.yaml is valid
    on a GPU machine and wrong on a CPU one. Without the check, ``cuda`` on a CPU machine
    fails deep inside torch after the run has started.
    """
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return f"{device!r} asked for, but torch sees no CUDA GPU here (use auto or cpu)"
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return f"{device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
    return None


def require_device(params_path: Path, key: str, device: str) -> None:
    """:func:`device_problem` as a one-line error naming the params file and key.

    Raises:
        ConfigError: ``device`` names a device this machine lacks.
    """
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"{params_path}: {key}: {problem}")
