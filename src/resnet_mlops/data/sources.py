"""Where raw data comes from: a URL, an archive or a folder, read safely and verified."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.progress import DownloadColumn, Progress, TimeRemainingColumn

from resnet_mlops.data.errors import DataError
from resnet_mlops.data.io import md5_file, sha256_file

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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


def download(url: str, directory: Path, md5: str = "") -> Path:
    """Download ``url`` into ``directory`` (atomically), reusing a copy whose MD5 matches.

    Shows a progress bar. A network failure or an MD5 mismatch is a one-line
    :class:`DataError`; the partial download is removed.
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
            columns = (*Progress.get_default_columns()[:2], DownloadColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"download {name}", total=total)
                while chunk := response.read(1 << 20):
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

    Returns:
        The archive's SHA-256, for the data report.
    """
    actual_sha256 = sha256_file(path)
    expected = {"sha256": sha256} if sha256 else {}
    sums = path.parent / "SHA256SUMS"
    if not sha256 and sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name.lstrip("*") == path.name:
                expected = {"sha256": digest}
    if expected and expected["sha256"] != actual_sha256:
        raise DataError(
            f"{path}: sha256 mismatch (expected {expected['sha256']}, got {actual_sha256})"
        )
    if md5 and (actual_md5 := md5_file(path)) != md5:
        raise DataError(f"{path}: md5 mismatch (expected {md5}, got {actual_md5})")
    return actual_sha256


def _safe_member_name(name: str) -> str | None:
    """The normalised relative name of a tar member, or None if it escapes the root."""
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal == ".." or normal.startswith("../"):
        return None
    return normal


def iter_archive_files(
    path: Path, problems: list[Problem] | None = None
) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(relative name, bytes)`` for each regular file of a tar, in archive order,
    and ``(name, None)`` for each folder.

    Nothing is extracted to disk. A member whose path escapes the archive root (``../``, an
    absolute path) or a link is refused with a :class:`DataError`, or, when ``problems`` is
    given (``skip_corrupt``), recorded there and skipped.
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
                if reason:
                    if problems is None:
                        raise DataError(f"{path}: {reason}")
                    problems.append(Problem(f"{path}:{member.name}", reason))
                    continue
                if member.isdir():
                    yield name, None
                    continue
                if not member.isfile():
                    continue
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has data
                yield name, extracted.read()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(f"{path}: truncated or corrupt archive ({error})") from None


def iter_folder_files(root: Path) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(relative name, bytes)`` for each file under a folder, in sorted order, and
    ``(name, None)`` for each folder."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for dirname in dirnames:
            yield Path(dirpath, dirname).relative_to(root).as_posix(), None
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DataError(f"{path}: unreadable ({error.strerror})") from None
            yield path.relative_to(root).as_posix(), data


def iter_source_files(
    path: Path, problems: list[Problem] | None = None
) -> Iterator[tuple[str, bytes | None]]:
    """Files of a local source, an archive or a folder, as ``(relative name, bytes)``, and its
    folders as ``(name, None)``."""
    check_readable(path)
    if path.is_dir():
        return iter_folder_files(path)
    if is_archive(path):
        return iter_archive_files(path, problems)
    raise DataError(f"{path}: expected a folder or a tar archive ({', '.join(ARCHIVE_SUFFIXES)})")
