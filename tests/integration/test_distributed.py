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
from resnet_mlops.train.launch import command_args, launch_requested, torchrun_command
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


def test_command_args_repeat_the_options_given_and_leave_out_the_unset_ones() -> None:
    options = {"--params": Path("p.yaml"), "--data": None, "--resume": True, "--auto": False}
    assert command_args("train", options, ["train.model=resnet20"]) == [
        *("train", "--params", "p.yaml", "--resume", "train.model=resnet20"),
    ]
    assert command_args("train", {"--data": Path("d")}) == ["train", "--data", "d"]


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


@pytest.mark.slow
def test_the_trainjob_command_trains_under_kubeflow_trainers_variables(
    tmp_path: Path, small_cifar: Path
) -> None:
    """Two "nodes" run the command pipelines/trainjob.py puts in the TrainJob, with the variables
    Kubeflow Trainer's torch-distributed runtime injects (PET_MASTER_ADDR/PORT, no rendezvous
    endpoint), on one shared folder as on the ReadWriteMany volume; then the same command on
    one node finds the checkpoint resumable (--auto-resume: the node count is not in its key)."""
    from pipelines.trainjob import SHARED_MOUNT, TrainJobRequest, train_command

    shared = tmp_path / "shared"
    (shared / "data" / "preprocessed").mkdir(parents=True)
    (shared / "data" / "preprocessed" / "cifar10").symlink_to(small_cifar)
    request = TrainJobRequest(
        name="smoke-000001",
        run="smoke",
        image="resnet-mlops:gpu",
        num_nodes=2,
        gpus_per_node=0,
        overrides=("dataset=cifar10", *SMALL, "train.schedule.length=20"),
        data="data/preprocessed/cifar10",
    )
    command = [part.replace(SHARED_MOUNT, str(shared)) for part in train_command(request)]
    command[0] = RESNET
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            command,
            cwd=PARAMS.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(
                nnodes="2",
                nproc_per_node="1",
                node_rank=str(rank),
                master_addr="127.0.0.1",
                master_port=port,
            ),
        )
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output
    assert "epoch 1/2: train loss" in outputs[0] and "epoch 1/2" not in outputs[1]
    run = shared / "runs" / "smoke"
    checkpoint = load_checkpoint(run / "models" / "checkpoint.pt")
    assert checkpoint["train_state"]["iteration"] == 20
    assert _iterations_of(run / "plots" / "train_history.json") == [13.0, 20.0]
    assert json.loads((run / "metrics" / "train.json").read_text())["iteration"] == 20

    # The same command on one node: resumes the finished checkpoint, trains nothing more.
    one = subprocess.run(
        command,
        cwd=PARAMS.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(nnodes="1", nproc_per_node="1"),
    )
    assert one.returncode == 0, one.stdout + one.stderr
    assert "not resuming" not in one.stderr
    assert load_checkpoint(run / "models" / "checkpoint.pt")["train_state"]["iteration"] == 20


def _iterations_of(history: Path) -> list[float]:
    return [r["iteration"] for r in json.loads(history.read_text())]
