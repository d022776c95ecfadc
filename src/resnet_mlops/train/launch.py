"""Multi-process launch: ``resnet train`` re-runs itself under torchrun when asked to.

torchrun reads every flag from a ``PET_<FLAG>`` environment variable too (``PET_NPROC_PER_NODE``,
``PET_NNODES``, ``PET_NODE_RANK``, ``PET_RDZV_ENDPOINT``, ``PET_RDZV_ID``,
``PET_RDZV_BACKEND``). So a Prefect deployment, the training image or a compose service asks
for a distributed run by setting those, and the command stays ``resnet train ...`` (the one
``dvc.yaml`` runs): this module replaces the process with
``python -m torch.distributed.run -m resnet_mlops.cli train ...``, whose workers then see
``LOCAL_RANK`` and train.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

# Set by torchrun in each worker it starts: such a process trains, it never launches again.
WORKER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def is_torchrun_worker(environ: Mapping[str, str]) -> bool:
    """Whether this process was started by torchrun (or another torch elastic agent)."""
    return any(name in environ for name in WORKER_ENV)


def launch_requested(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for more than one process (on this node or across nodes).

    ``PET_NPROC_PER_NODE`` may be a number or torchrun's ``auto``/``gpu``/``cpu``;
    ``PET_NNODES`` a number or an elastic ``MIN:MAX`` range. One process on one node needs no
    launcher, and a torchrun worker is already launched.
    """
    if is_torchrun_worker(environ):
        return False
    nproc = environ.get("PET_NPROC_PER_NODE", "").strip()
    nnodes = environ.get("PET_NNODES", "").strip()
    return nproc not in ("", "1") or nnodes not in ("", "1")


def torchrun_command(args: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The torchrun command line that runs ``resnet <args>`` in every worker.

    Its flags come from the ``PET_*`` variables torchrun reads itself. On one node with no
    rendezvous endpoint it adds ``--standalone`` (a local rendezvous on a free port), as one
    would type ``torchrun --standalone --nproc_per_node=N``.
    """
    command = [sys.executable, "-m", "torch.distributed.run"]
    single_node = environ.get("PET_NNODES", "1").strip() in ("", "1")
    if single_node and not environ.get("PET_RDZV_ENDPOINT") and "PET_STANDALONE" not in environ:
        command.append("--standalone")
    return [*command, "-m", "resnet_mlops.cli", *args]


def command_args(
    command: str, options: Mapping[str, object], arguments: Sequence[str] = ()
) -> list[str]:
    """``resnet <command>``'s command line again, for the workers torchrun starts.

    Each option (``{"--out": Path("models"), "--resume": True}``) becomes ``--flag value``, a
    switch that is on just ``--flag``; switches that are off and options that are None are left
    out, so the workers see their defaults. ``arguments`` (e.g. ``key=value`` overrides) follow.
    """
    args = [command]
    for flag, value in options.items():
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    return [*args, *arguments]


def relaunch_under_torchrun(args: Sequence[str]) -> NoReturn:
    """Replace this process with torchrun running ``resnet <args>``.

    ``exec``, not a child process: a SIGTERM (Prefect cancelling a flow run, ``docker stop``)
    reaches torchrun, which passes it on to the workers; its exit code is this command's.
    """
    command = torchrun_command(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
