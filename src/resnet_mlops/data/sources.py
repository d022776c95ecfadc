"""Where raw data comes from: a URL, an archive or a folder, read safely and verified."""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import DownloadColumn, Progress, TimeRemainingColumn

from resnet_mlops.errors import DataError
from resnet_mlops.io import md5_file, sha256_file

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# The most a download may bring: three times the official CIFAR-10 archive (163 MiB). A server
# that sends more (a wrong URL, a hostile or broken mirror) must not fill the disk.
MAX_DOWNLOAD_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, and why (listed in the data report when skipped)."""

    file: str
    reason: str


def is_url(source: str) -> bool:
    """Whether a source setting names a download rather than a local path."""
    return source.startswith(("http://", "https://", "file://"))


def is_archive(path: Path) -> bool:
    """Whether a path names a tar archive (compressed or not)."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


def check_readable(path: Path) -> None:
    """Fail in one line if a local source is missing or unreadable."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise DataError(f"{path}: permission denied")


def download(
    url: str, directory: Path, md5: str = "", *, max_bytes: int = MAX_DOWNLOAD_BYTES
) -> Path:
    """Download ``url`` into ``directory`` (atomically), reusing a copy whose MD5 matches.

    Shows a progress bar. A network failure, an MD5 mismatch or a body over ``max_bytes``
    (announced by ``Content-Length``, or counted as it arrives when the server does not say
    or says less) is a one-line :class:`DataError`; the partial download is removed.
    """
    name = posixpath.basename(urllib.request.urlparse(url).path) or "download"
    target = directory / name
    if target.exists() and (not md5 or md5_file(target) == md5):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > max_bytes:
                raise DataError(f"{url}: {total} bytes, over the download cap of {max_bytes}")
            received = 0
            columns = (*Progress.get_default_columns()[:2], DownloadColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"download {name}", total=total)
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DataError(
                            f"{url}: more than {max_bytes} bytes, over the download cap"
                        )
                    out.write(chunk)
                    progress.advance(task, len(chunk))
        if md5 and (actual := md5_file(tmp)) != md5:
            raise DataError(f"{url}: md5 mismatch (expected {md5}, got {actual})")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"{url}: download failed ({error})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def verify_archive(path: Path, *, md5: str = "", sha256: str = "") -> str:
    """Check an archive against the digests given, and against a ``SHA256SUMS`` file beside it.

    Every line of ``SHA256SUMS`` that names the archive is checked, in any format
    ``sha256sum`` writes (see :func:`sums_for`); one that names it but cannot be read is an
    error, never skipped.

    Returns:
        The archive's SHA-256, for the data report.
    """
    actual_sha256 = sha256_file(path)
    expected = [(sha256.lower(), "prepare's sha256")] if sha256 else []
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        try:
            text = sums.read_bytes()
        except OSError as error:
            raise DataError(f"{sums}: unreadable ({error.strerror})") from None
        listed = sums_for(text, path.name, sums)
        expected += [(digest, f"{sums} line {number}") for number, digest in listed]
    for digest, where in expected:
        if digest != actual_sha256:
            raise DataError(
                f"{path}: sha256 mismatch (expected {digest}, got {actual_sha256}; per {where})"
            )
    if md5 and (actual_md5 := md5_file(path)) != md5:
        raise DataError(f"{path}: md5 mismatch (expected {md5}, got {actual_md5})")
    return actual_sha256


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_GNU_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]+) (?P<mode>[ *]?)(?P<name>.+)")
_TAG_LINE = re.compile(r"(?P<algo>[A-Za-z0-9-]+) ?\((?P<name>.+)\) ?= ?(?P<digest>[0-9a-fA-F]+)")


def _unescape(name: str) -> str:
    """Undo ``sha256sum``'s escaping of a name (``\\\\``, ``\\n``, ``\\r``)."""
    out, chars = [], iter(name)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            char = {"\\": "\\", "n": "\n", "r": "\r"}.get(following)
            if char is None:
                raise ValueError(f"bad escape \\{following}")
        out.append(char)
    return "".join(out)


def sums_for(text: bytes, name: str, origin: Path) -> list[tuple[int, str]]:
    """The SHA-256 digests a checksum file gives for the file ``name``, with their line numbers.

    Reads every format ``sha256sum`` writes: GNU ``<hex>  name`` (text) and ``<hex> *name``
    (binary), the one-space ``<hex> name`` that ``sha256sum -c`` also accepts, the BSD tag
    ``SHA256 (name) = <hex>`` (``--tag``), escaped names (a leading backslash), CRLF line
    ends and NUL-terminated lines (``--zero``). Names are compared as paths relative to the
    file's folder (``./name`` is ``name``).

    Raises:
        DataError: a line that mentions ``name`` but is not a well-formed SHA-256 line.
    """
    decoded = text.decode("utf-8", "surrogateescape")
    zero = "\0" in decoded
    records = decoded.split("\0") if zero else decoded.split("\n")
    found = []
    for number, record in enumerate(records, start=1):
        line = record if zero else record.removesuffix("\r")
        if not line.strip():
            continue
        escaped = not zero and line.startswith("\\")
        body = line[1:] if escaped else line
        match = _TAG_LINE.fullmatch(body) or _GNU_LINE.fullmatch(body)
        listed = None
        if match:
            try:
                listed = _unescape(match["name"]) if escaped else match["name"]
            except ValueError:
                listed = None
        if listed is not None and posixpath.normpath(listed) != name:
            continue  # another file's line
        if listed is None:
            if name in line:
                raise DataError(f"{origin}:{number}: cannot read this line for {name}")
            continue  # not a checksum line, and not about this archive
        algo = match.groupdict().get("algo")
        if (algo is not None and algo.upper() not in ("SHA256", "SHA2-256")) or not (
            _HEX64.fullmatch(match["digest"])
        ):
            raise DataError(f"{origin}:{number}: not a SHA-256 digest for {name}")
        found.append((number, match["digest"].lower()))
    return found


def _safe_member_name(name: str) -> str | None:
    """The normalised relative name of a tar member, or None if it escapes the root."""
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../"):
        return None
    return normal


def _too_big(name: str, size: int, max_bytes: int | None) -> str | None:
    if max_bytes is not None and size > max_bytes:
        return f"{name!r} is {size} bytes, over the cap of {max_bytes} bytes"
    return None


def iter_archive_files(
    path: Path,
    problems: list[Problem] | None = None,
    *,
    max_bytes: int | None = None,
    only: Container[str] | None = None,
) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(relative name, bytes)`` for each regular file of a tar, in archive order,
    and ``(name, None)`` for each folder.

    Nothing is extracted to disk. A member whose path escapes the archive root (``../``, an
    absolute path), a link, or a file over ``max_bytes`` (checked from the tar header, before
    anything is read: a 1 GiB member compresses to 1 MB) is refused with a
    :class:`DataError`, or, when ``problems`` is given (``skip_corrupt``), recorded there and
    skipped. With ``only``, files not in it are passed over unread.
    """
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{path}: not a readable tar archive ({error})") from None
    with archive:
        try:
            for member in archive:
                name = _safe_member_name(member.name)
                reason = None
                if name is None:
                    reason = f"member {member.name!r} escapes the archive root"
                elif member.issym() or member.islnk():
                    reason = f"member {member.name!r} is a link"
                elif member.isfile() and (only is None or name in only):
                    too_big = _too_big(member.name, member.size, max_bytes)
                    reason = too_big and f"member {too_big}"
                if reason:
                    if problems is None:
                        raise DataError(f"{path}: {reason}")
                    problems.append(Problem(f"{path}:{member.name}", reason))
                    continue
                if member.isdir():
                    yield name, None
                    continue
                if not member.isfile() or (only is not None and name not in only):
                    continue
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has data
                yield name, extracted.read()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(f"{path}: truncated or corrupt archive ({error})") from None


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def iter_folder_files(
    root: Path,
    problems: list[Problem] | None = None,
    *,
    max_bytes: int | None = None,
    only: Container[str] | None = None,
) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(relative name, bytes)`` for each file under a folder, in sorted order, and
    ``(name, None)`` for each folder.

    As for archives: a symbolic link that leads out of the folder, or a file over
    ``max_bytes``, is refused with a :class:`DataError` or, when ``problems`` is given,
    recorded and skipped; links to folders are not followed; what is not a regular file
    (a FIFO, a device) is passed over unread. With ``only``, files not in it are not read.
    """
    real_root = root.resolve()

    def refuse(path: Path, reason: str) -> None:
        if problems is None:
            raise DataError(f"{path}: {reason}")
        problems.append(Problem(str(path), reason))

    def escapes(path: Path) -> bool:
        if not path.is_symlink():
            return False
        try:
            if _inside(path.resolve(), real_root):
                return False
        except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12
            refuse(path, "a symbolic link that does not resolve (a loop)")
            return True
        refuse(path, f"a symbolic link out of the source folder (to {os.readlink(path)})")
        return True

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for dirname in list(dirnames):
            if escapes(Path(dirpath, dirname)):
                dirnames.remove(dirname)
                continue
            yield Path(dirpath, dirname).relative_to(root).as_posix(), None
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            relative = path.relative_to(root).as_posix()
            if escapes(path) or (only is not None and relative not in only):
                continue
            try:
                info = path.stat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if reason := _too_big(relative, info.st_size, max_bytes):
                    refuse(path, reason)
                    continue
                with path.open("rb") as file:
                    # Bounded even if the file grows after the size check.
                    data = file.read() if max_bytes is None else file.read(max_bytes + 1)
                if reason := _too_big(relative, len(data), max_bytes):
                    refuse(path, reason)
                    continue
            except OSError as error:
                raise DataError(f"{path}: unreadable ({error.strerror})") from None
            yield relative, data


def iter_source_files(
    path: Path,
    problems: list[Problem] | None = None,
    *,
    max_bytes: int | None = None,
    only: Container[str] | None = None,
) -> Iterator[tuple[str, bytes | None]]:
    """Files of a local source, an archive or a folder, as ``(relative name, bytes)``, and its
    folders as ``(name, None)``.

    Args:
        path: the archive or folder.
        problems: where refused files go when they are to be skipped; None: refusal is an error.
        max_bytes: the largest file read (checked before reading it); None: no cap.
        only: the relative names of the files wanted; others are passed over unread.
    """
    check_readable(path)
    if path.is_dir():
        return iter_folder_files(path, problems, max_bytes=max_bytes, only=only)
    if is_archive(path):
        return iter_archive_files(path, problems, max_bytes=max_bytes, only=only)
    raise DataError(f"{path}: expected a folder or a tar archive ({', '.join(ARCHIVE_SUFFIXES)})")
