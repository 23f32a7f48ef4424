"""Small files that are expensive to decode, and forms that are expensive to parse: the uploads
issue 24's probe used to take the server down, generated here (never committed as files).

Each is tiny on the wire: a 6300x6300 float TIFF of one value compresses to a few hundred KB, a
lossless WebP of one colour to a few KB; decoded, they take hundreds of MB.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def float_tiff(side: int = 6300) -> bytes:
    """Mode F (32-bit float) grey: converted to 8 bits through float temporaries."""
    return encoded(Image.new("F", (side, side), 0.5), "TIFF", compression="tiff_adobe_deflate")


def lossless_webp(side: int = 6300) -> bytes:
    """libwebp decodes into its own buffer before Pillow copies it."""
    return encoded(Image.new("RGB", (side, side), (1, 2, 3)), "WEBP", lossless=True)


def rgba_png(side: int = 6000) -> bytes:
    """Transparency is composited onto white: an RGBA copy, a canvas and the alpha band."""
    return encoded(Image.new("RGBA", (side, side), (1, 2, 3, 9)), "PNG")


def repeated_scans_jpeg(side: int = 2000, repeats: int = 1000) -> bytes:
    """A progressive JPEG whose last scan is repeated: a few dozen KB that take seconds of CPU
    (each scan is a pass over every block of the image; 2000 px x 1000 repeats ~ 3 s)."""
    data = encoded(Image.new("RGB", (side, side), (90, 120, 30)), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunky_png(chunks: int = 873_000) -> bytes:
    """A 64x64 PNG with ``chunks`` empty private chunks before its pixels: Pillow reads each in
    Python while opening the file (873k chunks: 10 MB, about 1.7 s)."""
    png = encoded(Image.new("L", (64, 64), 7), "PNG")
    header_end = 8 + 25  # signature + IHDR
    return png[:header_end] + _chunk(b"prVt", b"") * chunks + png[header_end:]


def many_part_form(parts: int = 800_000, boundary: str = "b") -> tuple[bytes, str]:
    """A multipart body of ``parts`` empty parts and its Content-Type (800k parts: 7 MB)."""
    part = f"--{boundary}\r\n\r\n\r\n".encode()
    body = part * parts + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
