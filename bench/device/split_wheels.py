"""Carry DALI and the check's data to the lent GPU machine in parts that fit one call each.

The device machine has torch but no DALI and no network, and one call of the device tool takes
at most 64 MiB of files (the working tree included). So, here:

    python bench/device/split_wheels.py download          # DALI's wheels -> .device/wheels/
                                        [--pipeline]      # and DVC + MLflow for dvc repro
    python bench/device/carry_data.py                     # the data      -> .device/data/
    python bench/device/split_wheels.py split             # both -> .device/parts/bundle.NNN

``split`` packs ``.device/wheels`` and ``.device/data`` into one uncompressed tar (the wheels
and JPEGs are compressed already) and cuts it into parts of ``--part-mib`` MiB, with
``manifest.json``: the sha256 of every part, of the whole bundle and of every file in it. Each
part then travels in its own device call; on the device, ``run.sh`` calls

    python3 bench/device/split_wheels.py join --parts .device/parts --into /tmp/carry

which checks every part (naming the missing or damaged ones), joins them, checks the bundle
and each file, and unpacks them. The wheels are then installed with
``pip install --no-deps --no-index --target``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# DALI for CUDA 13 and what it needs that the device image (KINDS.md's package list) lacks,
# at the versions this project's CPU environment runs and tests. nvidia-nvjpeg is the nvJPEG
# library the "mixed" decoder loads; nvimgcodec's other codecs (JPEG 2000, TIFF) are left out.
WHEELS = (
    "nvidia-dali-cuda130==2.4.0",
    "nvidia-nvimgcodec-cu13==0.9.0.20",
    "nvidia-libnvcomp-cu13==5.3.0.16",
    "nvidia-nvjpeg==13.3.2.43",
    "astunparse==1.6.3",
    "gast==0.7.0",
    "makefun==1.16.0",
    "libcst==1.9.0",
    "optree==0.20.0",
    "nvtx==0.2.17",
)
# The device machine's Python, and the platform tags pip must match (the device README).
PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CARRY = Path(".device")
PIPELINE = Path(__file__).with_name("pipeline-wheels.txt")
CHUNK = 1 << 20


class CarryError(Exception):
    """A part or file is missing or damaged; the message names it."""


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pipeline_requirements(path: Path = PIPELINE) -> tuple[list[str], list[str]]:
    """``(wheels, sdists)``: the pinned requirements of ``path``; ``# sdist`` marks a package
    that has no wheel on PyPI and is built into one here."""
    wheels, sdists = [], []
    for line in path.read_text().splitlines():
        requirement, _, comment = line.partition("#")
        if requirement.strip():
            (sdists if "sdist" in comment else wheels).append(requirement.strip())
    return wheels, sdists


def download(target: Path, wheels: tuple[str, ...] = WHEELS, pipeline: bool = False) -> list[Path]:
    """``pip download`` the wheels for the device's Python and platform into ``target``.

    With ``pipeline``, also what ``dvc repro`` needs there (:data:`PIPELINE`); its pure-Python
    packages that PyPI has only as source are built into wheels with ``pip wheel``.
    """
    target.mkdir(parents=True, exist_ok=True)
    wanted, sdists = list(wheels), []
    if pipeline:
        more, sdists = pipeline_requirements()
        wanted += more
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON,
        "--implementation",
        "cp",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "-d",
        str(target),
        *wanted,
    ]
    subprocess.run(command, check=True)
    if sdists:
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(target)]
        subprocess.run([*build, *sdists], check=True)
    return sorted(target.glob("*.whl"))


def _members(sources: list[Path]) -> list[tuple[Path, str]]:
    """``(file, name in the bundle)`` for every file under ``sources``, in a stable order."""
    members = []
    for source in sources:
        if source.is_file():
            members.append((source, source.name))
            continue
        if not source.is_dir():
            raise CarryError(f"{source}: no such file or folder")
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            members.append((path, f"{source.name}/{path.relative_to(source).as_posix()}"))
    if not members:
        raise CarryError(f"nothing to pack under {', '.join(map(str, sources))}")
    return members


def split(sources: list[Path], parts_dir: Path, part_bytes: int) -> dict:
    """Pack ``sources`` into one tar, cut it into ``part_bytes`` parts under ``parts_dir``.

    Writes ``bundle.NNN`` and ``manifest.json`` (last, so a manifest always describes whole
    parts); parts of an earlier split that this one does not reuse are removed.

    Returns:
        The manifest.
    """
    if part_bytes < 1:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    members = _members(sources)
    parts_dir.mkdir(parents=True, exist_ok=True)
    files = {name: sha256_of(path) for path, name in members}
    with tempfile.NamedTemporaryFile(dir=parts_dir, suffix=".tar.tmp", delete=False) as tmp:
        bundle = Path(tmp.name)
    try:
        with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
            for path, name in members:
                tar.add(path, arcname=name, recursive=False)
        whole = hashlib.sha256()
        parts = []
        with open(bundle, "rb") as handle:
            while block := handle.read(part_bytes):
                whole.update(block)
                name = f"bundle.{len(parts):03d}"
                temporary = parts_dir / f"{name}.tmp"
                temporary.write_bytes(block)
                os.replace(temporary, parts_dir / name)
                parts.append(
                    {"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()}
                )
        manifest = {
            "bundle": {"bytes": bundle.stat().st_size, "sha256": whole.hexdigest()},
            "part_bytes": part_bytes,
            "parts": parts,
            "files": files,
        }
    finally:
        bundle.unlink(missing_ok=True)
    keep = {part["name"] for part in parts}
    for stale in parts_dir.glob("bundle.[0-9][0-9][0-9]"):
        if stale.name not in keep:
            stale.unlink()  # written by an earlier split (this script's own output)
    temporary = parts_dir / "manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(temporary, parts_dir / "manifest.json")
    return manifest


def check_parts(parts_dir: Path) -> dict:
    """The manifest, once every part it lists is present with its size and sha256.

    Raises:
        CarryError: the manifest or a part is missing, or a part is damaged (one line,
            naming every such part, so that only those need sending again).
    """
    manifest_path = parts_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CarryError(f"{manifest_path}: no such file (carry it with the last part)") from None
    except ValueError as error:
        raise CarryError(f"{manifest_path}: not JSON ({error})") from None
    missing, damaged = [], []
    for part in manifest["parts"]:
        path = parts_dir / part["name"]
        if not path.exists():
            missing.append(part["name"])
        elif path.stat().st_size != part["bytes"] or sha256_of(path) != part["sha256"]:
            damaged.append(part["name"])
    if missing or damaged:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if damaged:
            problems.append(f"damaged (size or sha256) {', '.join(damaged)}")
        raise CarryError(f"{parts_dir}: {'; '.join(problems)}: send those parts again")
    return manifest


def join(parts_dir: Path, into: Path) -> dict:
    """Check the parts, join them and unpack the bundle into ``into``; check every file.

    Raises:
        CarryError: a part, the bundle or an unpacked file does not match the manifest.
    """
    manifest = check_parts(parts_dir)
    into.mkdir(parents=True, exist_ok=True)
    bundle = into / "bundle.tar"
    whole = hashlib.sha256()
    with open(bundle, "wb") as out:
        for part in manifest["parts"]:
            with open(parts_dir / part["name"], "rb") as handle:
                while chunk := handle.read(CHUNK):
                    whole.update(chunk)
                    out.write(chunk)
    if whole.hexdigest() != manifest["bundle"]["sha256"]:
        raise CarryError(f"{bundle}: sha256 differs from the manifest's")
    with tarfile.open(bundle) as tar:
        tar.extractall(into, filter="data")
    bundle.unlink()
    for name, digest in manifest["files"].items():
        path = into / name
        if not path.exists():
            raise CarryError(f"{path}: listed in the manifest, not in the bundle")
        if sha256_of(path) != digest:
            raise CarryError(f"{path}: sha256 differs from the manifest's")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="pip download the wheels for the device")
    get.add_argument("--into", type=Path, default=CARRY / "wheels")
    get.add_argument(
        "--pipeline",
        action="store_true",
        help="also DVC, MLflow and their needs (pipeline-wheels.txt), for dvc repro there",
    )
    cut = commands.add_parser("split", help="pack folders into parts and a manifest")
    cut.add_argument("sources", type=Path, nargs="*", default=[CARRY / "wheels", CARRY / "data"])
    cut.add_argument("--parts", type=Path, default=CARRY / "parts")
    cut.add_argument(
        "--part-mib",
        type=float,
        default=56,
        help="MiB per part: 64 MiB a call, less the working tree (about 4 MiB) and a margin",
    )
    glue = commands.add_parser("join", help="check, join and unpack the parts (on the device)")
    glue.add_argument("--parts", type=Path, default=CARRY / "parts")
    glue.add_argument("--into", type=Path, required=True)
    args = parser.parse_args()
    try:
        if args.command == "download":
            for wheel in download(args.into, pipeline=args.pipeline):
                print(f"{wheel.stat().st_size / 2**20:8.1f} MiB  {wheel.name}")
        elif args.command == "split":
            manifest = split(args.sources, args.parts, int(args.part_mib * 2**20))
            size = manifest["bundle"]["bytes"] / 2**20
            print(f"{args.parts}: {len(manifest['parts'])} parts, {size:.1f} MiB in all")
            for part in manifest["parts"]:
                print(f"  {args.parts / part['name']}  {part['bytes'] / 2**20:.1f} MiB")
        else:
            manifest = join(args.parts, args.into)
            print(
                f"{args.into}: {len(manifest['files'])} files from {len(manifest['parts'])} parts"
            )
    except (CarryError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
