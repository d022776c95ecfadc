"""One ``resnet train`` at a time per output folder: an exclusive lock on ``<out>/.lock``.

``dvc repro`` has its own lock (``.dvc/tmp/rwlock``), but it does not see a ``resnet train
--out models`` started by hand, nor a training left running by a killed ``dvc repro``. Two
writers of one folder would leave a checkpoint and model of neither run, so the second one
refuses to start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from resnet_mlops.errors import UserError

LOCK_FILE = ".lock"


class OutputBusy(UserError):
    """Another process holds the output folder; the message is one line naming it."""


@contextlib.contextmanager
def lock_output(out: Path) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``out/.lock`` for the ``with`` block.

    The kernel releases a ``flock`` when its holder exits, however it exits (``kill -9``
    too), so a lock is never left stale. The file stays (removing it would let a third
    process lock a new file while a second still holds the old one); it holds the holder's
    pid for the error message.

    Raises:
        OutputBusy: another process holds the lock.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    # No O_TRUNC: the holder's pid must survive a failed attempt.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputBusy(f"{out}: in use by another resnet train (pid {holder})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            # A full disk: the lock holds without the pid (a second writer then sees "pid
            # unknown"); the first output that needs the space names itself in the error.
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        yield path
    finally:
        os.close(fd)  # releases the lock
