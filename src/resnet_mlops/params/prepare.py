"""The ``prepare`` section of params.yaml: where each data set comes from and the read caps."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from resnet_mlops.params.base import Section, matching

# Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS: 0.25 GiB as 24-bit RGB),
# kept as the default cap: every image Pillow decoded without a warning before still passes.
DEFAULT_MAX_PIXELS = 89_478_485

Dataset = Literal["cifar10", "imagenet"]


class Cifar10Source(Section):
    """Where CIFAR-10 comes from.

    ``source: auto`` takes the team's mirror when it exists (machines without internet) and
    otherwise downloads the official archive from ``url``. A URL, an archive (the official
    pickled batches or class folders) or a folder of class folders may be named instead.
    """

    source: Annotated[str, Field(min_length=1)]
    mirror: str
    url: str
    # checked for downloads and official-format archives; "" skips the check
    md5: Annotated[str, matching("([0-9a-f]{32})?", '32 lowercase hex digits or ""')]


class ImagenetSource(Section):
    """Where ImageNet-layout data comes from: a folder or tar archive holding ``train/<wnid>/``
    and ``val/<wnid>/``, or a single folder of ``<wnid>/`` class folders (like the sample)."""

    source: Annotated[str, Field(min_length=1)]
    # "" for none; a SHA256SUMS file beside an archive is checked anyway
    sha256: Annotated[str, matching("([0-9a-f]{64})?", '64 lowercase hex digits or ""')]


# The default byte cap of one source file: twice the largest file a real source holds (an
# official CIFAR-10 batch is 31 MB; ImageNet JPEGs stay under 20 MB), far below what a
# compressed archive can expand to (a 1 GiB member of zeros is a 1 MB tar.gz).
DEFAULT_MAX_FILE_BYTES = 64 * 2**20


class PrepareParams(Section):
    """The ``prepare`` section of params.yaml.

    ``max_pixels`` and ``max_file_bytes`` bound what one file may cost to read and decode,
    checked from headers before anything is read or decoded: a file over a cap is an error,
    or, with ``skip_corrupt``, skipped and listed in the data report.
    """

    cifar10: Cifar10Source
    imagenet: ImagenetSource
    skip_corrupt: bool
    workers: Annotated[int, Field(ge=0)]  # 0: every core
    max_pixels: Annotated[int, Field(ge=1)] = DEFAULT_MAX_PIXELS
    max_file_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_FILE_BYTES
