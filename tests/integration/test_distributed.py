"""``resnet train`` under torchrun via its PET_* environment, and resuming across rank counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.engine.checkpoint import load_checkpoint
from resnet_mlops.train.launch import launch_requested, torchrun_command
from tests.support.mlflow_server import free_port
from tests.support.project import PARAMS

RESNET = str(Path(sys.executable).with_name("resnet"))
# A few dozen iterations of ResNet-20 on the small data: 13 iterations per epoch at batch 32,
# with one rank (32) or two (2 x 16 over disjoint halves).
SMALL = [
    "train.batch_size=32",
    "train.schedule.milestones=[]",  # the legs grow the length (20, 40, 50): no lr drop
    "train.log_every=5",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]


def test_launch_is_requested_by_torchruns_environment_only_outside_workers() -> None:
    assert not launch_requested({})
    assert not launch_requested({"PET_NPROC_PER_NODE": "1"})
    assert launch_requested({"PET_NPROC_PER_NODE": "2"})
    assert launch_requested({"PET_NPROC_PER_NODE": "gpu"})
    assert launch_requested({"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1"})
    # A worker torchrun started has the same PET_* variables; it must train, not relaunch.
    assert not launch_requested({"PET_NPROC_PER_NODE": "2", "LOCAL_RANK": "0"})
    assert not launch_requested({"PET_NNODES": "2", "TORCHELASTIC_RUN_ID": "x"})


def test_torchrun_command_is_standalone_on_one_node_only() -> None:
    args = ["train", "--out", "models", "train.model=resnet56"]
    one_node = torchrun_command(args, {"PET_NPROC_PER_NODE": "2"})
    assert one_node == [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("-m", "resnet_mlops.cli", *args),
    ]
    # Several nodes meet at a rendezvous endpoint that torchrun reads from PET_RDZV_ENDPOINT.
    many = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_RDZV_ENDPOINT": "head:29400"}
    assert "--standalone" not in torchrun_command(args, many)
    assert torchrun_command(args, many)[-len(args) :] == args


def _command(folder: Path, data: Path, *extra: str) -> list[str]:
    return [
        *(RESNET, "train", "--params", str(PARAMS), "--data", str(data)),
        *("--out", str(folder / "models"), "--metrics", str(folder / "m.json")),
        *("--history", str(folder / "h.json"), *SMALL, *extra),
    ]


def _env(**pet: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    return {**env, "OMP_NUM_THREADS": "1", **{f"PET_{k.upper()}": v for k, v in pet.items()}}


def _one_node(folder: Path, data: Path, *extra: str) -> None:
    """``resnet train`` as one process, no torchrun."""
    command = _command(folder, data, *extra)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr


def _two_nodes(folders: list[Path], data: Path, *extra: str) -> list[str]:
    """Two "nodes" of one process each, as on two machines: each its own ``--out`` folder,
    meeting at node 0's rendezvous endpoint (torchrun's default static rendezvous, where the
    node rank decides who is rank 0). Returns each node's stdout."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            _command(folder, data, *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(nnodes="2", nproc_per_node="1", node_rank=str(rank), rdzv_endpoint=endpoint),
        )
        for rank, folder in enumerate(folders)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output
    return outputs


def _iterations(folder: Path) -> list[float]:
    return [r["iteration"] for r in json.loads((folder / "h.json").read_text())]


@pytest.mark.slow
def test_checkpoint_from_two_nodes_resumes_on_one_and_back(
    tmp_path: Path, small_cifar: Path
) -> None:
    head, other = tmp_path / "node0", tmp_path / "node1"
    outputs = _two_nodes([head, other], small_cifar, "train.schedule.length=20")
    # Only rank 0 (node 0) printed progress and wrote the checkpoint, the model and metrics.
    assert "epoch 1/2: train loss" in outputs[0] and "epoch 1/2" not in outputs[1]
    assert not (other / "models" / "checkpoint.pt").exists() and not (other / "h.json").exists()
    checkpoint = load_checkpoint(head / "models" / "checkpoint.pt")
    assert checkpoint["train_state"]["iteration"] == 20
    run_id = checkpoint["train_state"]["run_id"]
    assert run_id

    # Two ranks -> one: the checkpoint holds nothing per rank.
    _one_node(head, small_cifar, "--resume", "train.schedule.length=40")
    assert _iterations(head) == [13.0, 20.0, 33.0, 40.0]

    # One rank -> two, and node 1 has no checkpoint on its disk: rank 0 sends it.
    _two_nodes([head, other], small_cifar, "--resume", "train.schedule.length=50")
    assert _iterations(head) == [13.0, 20.0, 33.0, 40.0, 50.0]
    assert not (other / "models" / "checkpoint.pt").exists()
    _, meta = load_model(head / "models" / "model.pt")
    # Each launch extended a FINISHED run: that run is never reopened; the extension is a
    # run of its own that names the one it continues (rank 0 of each logged its epochs).
    client = MlflowClient()
    runs = [client.get_run(meta["provenance"]["mlflow_run_id"])]
    while "resumed_from" in runs[-1].data.tags:
        runs.append(client.get_run(runs[-1].data.tags["resumed_from"]))
    assert [run.info.run_id for run in runs][-1] == run_id and len(runs) == 3
    assert {run.info.status for run in runs} == {"FINISHED"}
    steps = [
        m.step for run in runs for m in client.get_metric_history(run.info.run_id, "val_error")
    ]
    assert sorted(steps) == [1, 2, 3, 4, 5]
