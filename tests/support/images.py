"""A real PNG of any size in a few hundred KB: decompression bombs for the hostile-input tests."""

from __future__ import annotations

import struct
import zlib


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def zlib_of_zeros(count: int, block: int = 1 << 24) -> bytes:
    """A zlib stream of ``count`` zero bytes, without compressing them all: a block flushed to a
    byte boundary compresses the same every time, so it is compressed once and repeated."""
    zero = bytes(block)
    once = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = once.compress(zero) + once.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(count, block)
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(zero, adler)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = tail.compress(bytes(rest)) + tail.flush()
    adler = zlib.adler32(bytes(rest), adler)
    return b"\x78\xda" + piece * full + end + struct.pack(">I", adler)


def black_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` black pixels (30000x30000: 0.9 MB
    on disk, 0.84 GiB decoded, 2.5 GiB as RGB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib_of_zeros((1 + width) * height)  # each row: filter byte 0, then zeros
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", pixels),
            png_chunk(b"IEND", b""),
        )
    )
