"""Atomic writes and checksums: a killed stage never leaves a half-written output behind, and a
command never replaces a folder it did not write."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from resnet_mlops.errors import DataError

# The file system refused a write for a reason the user fixes outside this program (full,
# read-only, no permission, a folder where a file goes or the reverse): the CLI reports these
# in one line naming the output (see ``resnet_mlops.cli``), never a traceback.
OUTPUT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
    | {errno.EISDIR, errno.ENOTDIR}
)

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: Path) -> str:
    """Hex MD5 of a file (the official CIFAR-10 archive is published with one)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_outputs(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file in a folder (sorted), for a manifest."""
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def read_json(path: Path, hint: str) -> Any:
    """Read a JSON file a stage wrote; missing or malformed is a one-line :class:`DataError`.

    Args:
        path: the file.
        hint: what to do when it is missing, e.g. ``"run the prepare stage first"``.
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file ({hint})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg})") from None


def dumps_json(data: Any) -> str:
    """Deterministic JSON (sorted keys, fixed indentation): equal data, equal bytes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def temp_file_beside(path: Path) -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder (made if missing), a hidden name no stage reads.

    Raises:
        OSError: the folder cannot be made or written, named ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise naming_output(error, path, path.parent) from error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise naming_output(error, path, Path(tmp)) from error
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write deterministic JSON atomically."""
    atomic_write_bytes(path, dumps_json(data).encode())


class OutputError(DataError):
    """An output path the command may not replace; the message is one line naming it."""


def naming_output(error: OSError, output: Path, temp: Path) -> OSError:
    """The same error, naming ``output`` where it named ``temp`` (or a file inside it).

    Writes go to hidden temporary names; a user must read the path they asked for
    (``data/prepared/cifar10: no space left on device``), not ``.cifar10.tmp-x1y2/a.npy``.
    """
    name = error.filename
    inside = name is None or Path(os.path.abspath(name)).is_relative_to(os.path.abspath(temp))
    if error.errno is None or not inside:
        return error
    return OSError(error.errno, error.strerror, str(output))  # the errno's own subclass


def os_error_message(error: OSError) -> str:
    """One line for a file system error: ``<path>: no space left on device``."""
    reason = error.strerror or str(error)
    reason = reason[:1].lower() + reason[1:]
    return f"{error.filename}: {reason}" if error.filename is not None else reason


class _PlainWriter:
    """A file numpy does not recognise as one, so that it writes with ``write()``: its own fast
    path (``ndarray.tofile``) reports a full disk as "N requested and M written", without an
    errno; Python's ``write()`` raises ``OSError(ENOSPC)``."""

    def __init__(self, file: Any) -> None:
        self.write = file.write


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save(path, array)``, byte for byte, with a full disk reported as ``ENOSPC``."""
    with open(path, "wb") as f:
        np.lib.format.write_array(_PlainWriter(f), np.asanyarray(array), allow_pickle=False)


# --- output folders: replace only what the same command wrote --------------------------------

Command = Literal["prepare", "preprocess", "pull"]

OUTPUT_MARKER = ".resnet-output.json"
# prepare and preprocess outputs are DVC-tracked: the DVC hash of a folder covers every file
# in it, so a marker file would change data/prepared/<ds> and data/preprocessed/<ds> (and
# dvc.lock) for no gain. Their manifest.json already says which command wrote them and lists
# every file; the keys below tell one command's manifest from the other's.
_MANIFEST_KEYS: dict[str, frozenset[str]] = {
    "prepare": frozenset({"dataset", "layout", "source", "classes", "outputs"}),
    "preprocess": frozenset({"dataset", "prepared", "params", "outputs"}),
}


def _listed_by_manifest(folder: Path, command: str) -> set[str] | None:
    """The files a prepare/preprocess output's manifest lists (itself included), or None when
    ``folder`` has no manifest of that command."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing, a folder, ...
        return None
    if not isinstance(manifest, dict) or not _MANIFEST_KEYS[command] <= manifest.keys():
        return None
    if not isinstance(manifest["outputs"], dict):
        return None
    return {*manifest["outputs"], "manifest.json"}


def _listed_by_marker(folder: Path, command: str) -> set[str] | None:
    """The entries an output's marker lists (itself included), or None when ``folder`` has no
    marker of ``command``."""
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing, a folder, ...
        return None
    if not isinstance(marker, dict) or marker.get("command") != command:
        return None
    if not isinstance(marker.get("entries"), list):
        return None
    return {*map(str, marker["entries"]), OUTPUT_MARKER}


def _entries(folder: Path) -> list[str]:
    """Every file, link and folder under ``folder``, relative, sorted; links are not followed."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def _foreign(folder: Path, command: Command) -> str | None:
    """Why ``folder`` is not a previous output of ``command``; None when it is (or is empty)."""
    present = _entries(folder)
    if not present:
        return None  # nothing in it to lose
    if command in _MANIFEST_KEYS:
        listed = _listed_by_manifest(folder, command)
    else:
        listed = _listed_by_marker(folder, command)
    if listed is None:
        return f"exists and was not written by `resnet {command}`"
    # A file the user added to a previous output is theirs: replacing the folder would lose it.
    extra = [entry for entry in present if entry not in listed]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        return f"contains {extra[0]}{more}, which `resnet {command}` did not write"
    return None


def check_output_folder(target: Path, command: Command, *, force: bool = False) -> None:
    """Refuse, before any work, an output path that ``command`` may not replace.

    A missing path, an empty folder and a previous output of the same command (recognised by
    its manifest or marker, with nothing added to it) may be replaced. With ``force``, any
    folder may. A file or a symbolic link never is: writing a folder in its place would hide
    what the user had there.

    Raises:
        OutputError: one line naming ``target`` and the reason.
    """
    if not os.path.lexists(target):
        for parent in target.parents:  # the folder would be made inside the first existing one
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise OutputError(f"{target}: {parent} is a file, not a folder")
                break
        return
    if os.path.islink(target):
        raise OutputError(f"{target}: is a symbolic link; refusing to replace it")
    if not target.is_dir():
        raise OutputError(
            f"{target}: exists and is a file, not a folder; refusing to replace it with "
            f"the output of `resnet {command}`"
        )
    if os.path.abspath(target) in (os.path.abspath(Path.cwd()), os.path.abspath(os.sep)):
        raise OutputError(f"{target}: is the current or root folder; refusing to replace it")
    reason = None if force else _foreign(target, command)
    if reason is not None:
        raise OutputError(f"{target}: {reason}; refusing to replace it (use --force)")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system lacks it. The standard library has no atomic swap of folders."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes.append(ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_folder(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``; a folder there ends up at ``tmp`` (the caller removes it)."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        return
    # Two renames: a kill between them leaves the old folder whole under a hidden name.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    os.rename(old, tmp)


@contextlib.contextmanager
def atomic_directory(
    target: Path,
    command: Command,
    *,
    force: bool = False,
    marker: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    ``target`` must be replaceable by ``command`` (:func:`check_output_folder`): checked
    before the work starts and again just before the swap. prepare and preprocess outputs are
    recognised by their ``manifest.json``: a marker file inside them would change their DVC
    hash. Other commands' outputs (``pull``: not DVC-tracked) get a marker, ``.resnet-output
    .json``, listing the command, every entry written and ``marker``'s items; it is written
    inside the temporary folder, so it arrives with the output.

    The new folder replaces the old one in one step where Linux allows (``RENAME_EXCHANGE``),
    else by two renames; the old one is removed only after the new one is in place. On any
    error (or a kill) the temporary folder is removed, or at worst left under a hidden
    ``.name.tmp-*`` name that no stage reads, and the previous ``target`` is untouched. A file
    system error inside the temporary folder is re-raised naming ``target``.

    Raises:
        OutputError: ``target`` may not be replaced by ``command``.
    """
    check_output_folder(target, command, force=force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as error:  # name the output, not the temporary folder that was refused
        raise naming_output(error, target, target.parent) from error
    try:
        try:
            yield tmp
            if command not in _MANIFEST_KEYS:
                entries = _entries(tmp)
                write_json_atomic(
                    tmp / OUTPUT_MARKER, {**(marker or {}), "command": command, "entries": entries}
                )
        except OSError as error:
            raise naming_output(error, target, tmp) from error
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the output is an ordinary folder
        check_output_folder(target, command, force=force)  # it may have changed meanwhile
        _replace_folder(tmp, target)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# --- single-file outputs: replace only what the same command wrote ---------------------------

_TRAIN_ROW = ("epoch", "iteration", "train_loss")
_READ_CAP = 64 << 20  # no output of ours is near this; a bigger file is not read to find out


def _holds(document: object, *keys: str) -> bool:
    return isinstance(document, dict) and set(keys) <= document.keys()


def _holds_only(document: object, required: str, *optional: str) -> bool:
    """A headline file: ``required`` and nothing but ``optional`` besides (the full file of the
    same stage holds more, so neither passes for the other)."""
    return _holds(document, required) and document.keys() <= {required, *optional}


# How an earlier output of each command's file option is recognised: keys it always holds.
# Shapes, not a marker key: these are DVC metrics and plots, read as they are by `dvc metrics`
# and `dvc plots`; a command's outputs differ from each other's in these keys.
OUTPUT_FILES: dict[str, Callable[[Any], bool]] = {
    "check-params --out": lambda doc: doc == {"params": "checked"},
    "prepare --report": lambda doc: _holds(doc, "dataset", "source", "layout", "images"),
    "preprocess --report": lambda doc: (
        _holds(doc, "dataset", "splits", "mean", "std")
        or _holds(doc, "dataset", "samples", "shards", "reencoded")
    ),
    "train --metrics": lambda doc: _holds(doc, *_TRAIN_ROW),
    # The stages' COMPARED_METRICS (train.trainer, stages.evaluate, stages.register).
    "train --headline": lambda doc: _holds_only(
        doc, "train_error", "val_error", "images_per_second"
    ),
    "train --history": lambda doc: (
        isinstance(doc, list) and all(_holds(row, *_TRAIN_ROW) for row in doc)
    ),
    "evaluate --metrics": lambda doc: _holds(doc, "model", "split", "samples"),
    "evaluate --headline": lambda doc: _holds_only(
        doc, "test_top1_error", "test_10crop_top1_error"
    ),
    "register --out": lambda doc: _holds(doc, "name", "version", "promoted", "reason"),
    "register --headline": lambda doc: _holds_only(doc, "promoted", "version"),
    "report --metrics": lambda doc: (
        isinstance(doc, dict) and all(_holds(row, "runs") for row in doc.values())
    ),
}
_WITH_FORCE = ("prepare", "preprocess")  # the commands whose --force also covers their files


def _json_or_none(path: Path) -> tuple[bool, Any]:
    """(True, the document) for a readable JSON file; (True, None) for an empty or blank one;
    (False, None) for anything else."""
    try:
        if path.stat().st_size > _READ_CAP:
            return False, None
        text = path.read_bytes()
        return True, json.loads(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False, None


def check_output_file(target: Path, output: str, *, force: bool = False) -> None:
    """Refuse, before any work, a single-file output that ``output`` may not replace.

    ``output`` is a command and its option, a key of :data:`OUTPUT_FILES` (``"train
    --metrics"``). A missing path, an empty file, ``{}`` or ``[]``, and a JSON file of the shape
    that option writes may be replaced: under ``dvc repro`` a stage replaces its own metrics,
    which DVC does not delete (``cache: false``). Anything else (``--report params.yaml``) is
    refused; prepare's and preprocess's ``--force`` allow it. A folder never is replaced.

    Raises:
        OutputError: one line naming ``target`` and the reason.
    """
    if not os.path.lexists(target):
        return
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"{target}: is a directory")
    if force:
        return
    refusal = "refusing to replace it" + (
        " (use --force)" if output.split()[0] in _WITH_FORCE else ""
    )
    if target.is_symlink():  # replacing the link would leave its target stale, unnoticed
        raise OutputError(f"{target}: is a symbolic link; {refusal}")
    readable, document = _json_or_none(target)
    if readable and (document in (None, {}, []) or OUTPUT_FILES[output](document)):
        return
    raise OutputError(f"{target}: exists and was not written by `resnet {output}`; {refusal}")
