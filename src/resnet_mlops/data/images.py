"""Decoding checks and the few conversions a JPEG decoder should not have to meet."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_mlops.params.prepare import DEFAULT_MAX_PIXELS

# Formats and modes the decoders (DALI's nvJPEG / libjpeg-turbo, torchvision) read as they are.
DECODER_MODES = {"RGB", "L"}


@dataclass(frozen=True)
class ImageInfo:
    """What a fully decoded image turned out to be."""

    format: str
    mode: str
    width: int
    height: int


class BadImage(Exception):
    """The bytes are not a complete, decodable image; the message says why."""


@contextlib.contextmanager
def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """Open an image from its header alone, refusing one over ``max_pixels`` before any pixel
    is decoded (a 2.6 MB PNG can hold 30000x30000 pixels: 2.5 GiB decoded).

    Pillow's own check reads the process-wide ``Image.MAX_IMAGE_PIXELS``; it is set here for the
    duration, so the data stages must decode in one thread per process (they do: a process
    pool). Within the block, decoding (``load``, ``convert``) may still raise the errors that
    :func:`decoding_errors` turns into :class:`BadImage`.

    Raises:
        BadImage: not an image, or its header gives more than ``max_pixels`` pixels.
    """
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # The size is checked below from the header, so the message can name it.
        Image.MAX_IMAGE_PIXELS = None
        with decoding_errors():
            image = Image.open(io.BytesIO(data))
        # Frames met later (animations, multi-page files) are checked by Pillow at load.
        Image.MAX_IMAGE_PIXELS = max_pixels
        with image, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"image too large: {width}x{height} pixels, over the cap of {max_pixels}"
                )
            yield image
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextlib.contextmanager
def decoding_errors() -> Iterator[None]:
    """Turn what Pillow raises for bad bytes into a one-line :class:`BadImage`."""
    try:
        yield
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"truncated or corrupt image ({error})") from None


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode an image completely (not just its header) and describe it.

    Raises:
        BadImage: not an image, over ``max_pixels`` pixels, or truncated/corrupt.
    """
    with decoding_errors(), open_image(data, max_pixels) as image:
        image.load()
        return ImageInfo(image.format or "?", image.mode, image.width, image.height)


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode to an ``(H, W, 3)`` uint8 RGB array (grayscale and CMYK become RGB).

    Args:
        data: the encoded image.
        max_pixels: refuse larger images from their header, before decoding.
        size: if given, the only ``(width, height)`` accepted, also checked from the header.

    Raises:
        BadImage: not an image, too large, not ``size``, or truncated/corrupt.
    """
    with decoding_errors(), open_image(data, max_pixels) as image:
        if size is not None and image.size != size:
            raise BadImage(
                f"expected a {size[0]}x{size[1]} image, got {image.width}x{image.height}"
            )
        return np.asarray(image.convert("RGB"))


def needs_reencoding(info: ImageInfo, max_side: int) -> bool:
    """Whether the bytes must be re-encoded: not a JPEG in RGB/L, or larger than ``max_side``.

    The real ImageNet has CMYK JPEGs and PNGs named .JPEG; everything else keeps its bytes.
    """
    too_large = max_side > 0 and min(info.width, info.height) > max_side
    return info.format != "JPEG" or info.mode not in DECODER_MODES or too_large


def reencode_jpeg(
    data: bytes, max_side: int, quality: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """Re-encode as an RGB (or grayscale) JPEG, shrinking the shorter side to ``max_side``."""
    with decoding_errors(), open_image(data, max_pixels) as image:
        image = image.convert("L" if image.mode in ("L", "LA", "I;16", "1") else "RGB")
        shorter = min(image.size)
        if max_side > 0 and shorter > max_side:
            scale = max_side / shorter
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=False, subsampling=0)
        return out.getvalue()
