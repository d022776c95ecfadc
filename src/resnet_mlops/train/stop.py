"""Stopping a training cleanly: on SIGTERM, or when the process that launched it is gone.

Either way the loop sees :attr:`StopRequest.requested` between two batches, saves a
checkpoint and raises ``Interrupted`` (``resnet train`` exits 143).

Why watch the launcher: a SIGTERM or SIGKILL to ``dvc repro`` does not reach the stage's
command (DVC neither forwards it nor kills its child), so the training went on as an orphan,
finished outside DVC and left a checkpoint that no ``dvc.lock`` describes. Linux's
``prctl(PR_SET_PDEATHSIG)`` does not cover it: it fires when the *direct* parent dies, which
under DVC may be the ``$SHELL -c`` wrapper that outlives a killed ``dvc``, and it fires when
the parent's forking *thread* ends, which is not the parent exiting. So a daemon thread polls
the chain of ancestors up to the launcher instead (:func:`watch_launcher`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import psutil

from resnet_mlops.train.launch import is_torchrun_worker

# Shells that DVC (``$SHELL -c <cmd>``), make or a script may put between the launcher and us.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh", "ash"})


class StopRequest:
    """A flag the training loop polls: set by SIGTERM or by :func:`watch_launcher`."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        """Whether the training should checkpoint and stop."""
        return self._reason is not None

    @property
    def reason(self) -> str:
        """Why it should stop (``"SIGTERM"``, or the launcher that exited)."""
        return self._reason or "not requested"

    def request(self, reason: str) -> None:
        """Ask the loop to stop; the first reason is kept."""
        with self._lock:
            if self._reason is None:
                self._reason = reason

    @contextlib.contextmanager
    def on_sigterm(self) -> Iterator[StopRequest]:
        """Turn SIGTERM into a request for the ``with`` block (main thread only; elsewhere
        Python cannot install signal handlers and SIGTERM keeps its default)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: self.request("SIGTERM"))
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)


def _is_wrapper(process: psutil.Process, skip_agent: bool) -> bool:
    """A process that only relays the launcher's command: ``<shell> [options] -c <cmd>``, or
    torch's elastic agent when this is one of its workers."""
    try:
        command = process.cmdline()
        name = os.path.basename(command[0] if command else process.name())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if name.lstrip("-") in SHELLS and "-c" in command[1:]:
        return True
    return skip_agent and ("torch.distributed.run" in command or name == "torchrun")


def launcher_chain(process: psutil.Process | None = None) -> list[psutil.Process]:
    """This process's ancestors up to and including the launcher: the nearest one that is
    not a wrapper (see :func:`_is_wrapper`). Empty when there is no parent to watch."""
    process = process or psutil.Process()
    skip_agent = is_torchrun_worker(os.environ)
    chain = []
    parent = process.parent()
    while parent is not None and parent.pid > 1:
        chain.append(parent)
        if not _is_wrapper(parent, skip_agent):
            return chain
        parent = parent.parent()
    return chain


def _gone(process: psutil.Process) -> bool:
    try:
        # is_running() compares the start time too, so a reused pid does not count as alive.
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def watch_launcher(stop: StopRequest, interval_s: float = 1.0) -> Callable[[], None]:
    """Request a stop as soon as the launcher (or a wrapper between it and us) exits.

    Returns:
        A function that ends the watch.
    """
    chain = launcher_chain()
    if not chain:
        print("--stop-with-parent: no parent process to watch", file=sys.stderr)
        return lambda: None
    launcher = chain[-1]
    name = f"process {launcher.pid} ({launcher.name()})"
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval_s):
            if any(_gone(process) for process in chain):
                print(f"resnet train: {name} that launched it exited; stopping", file=sys.stderr)
                stop.request(f"its launcher, {name}, exited")
                return

    threading.Thread(target=watch, name="resnet-watch-launcher", daemon=True).start()
    return done.set
