"""Decoding checks and the few conversions a JPEG decoder should not have to meet."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def inspect_image(data: bytes) -> ImageInfo:
    """Decode an image completely (not just its header) and describe it.

    Raises:
        BadImage: not an image, or truncated/corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return ImageInfo(image.format or "?", image.mode, image.width, image.height)
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"truncated or corrupt image ({error})") from None


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode to an ``(H, W, 3)`` uint8 RGB array (grayscale and CMYK become RGB).

    Raises:
        BadImage: not an image, or truncated/corrupt.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImage(f"truncated or corrupt image ({error})") from None


def needs_reencoding(info: ImageInfo, max_side: int) -> bool:
    """Whether the bytes must be re-encoded: not a JPEG in RGB/L, or larger than ``max_side``.

    The real ImageNet has CMYK JPEGs and PNGs named .JPEG; everything else keeps its bytes.
    """
    too_large = max_side > 0 and min(info.width, info.height) > max_side
    return info.format != "JPEG" or info.mode not in DECODER_MODES or too_large


def reencode_jpeg(data: bytes, max_side: int, quality: int) -> bytes:
    """Re-encode as an RGB (or grayscale) JPEG, shrinking the shorter side to ``max_side``."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L" if image.mode in ("L", "LA", "I;16", "1") else "RGB")
        shorter = min(image.size)
        if max_side > 0 and shorter > max_side:
            scale = max_side / shorter
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=False, subsampling=0)
        return out.getvalue()
