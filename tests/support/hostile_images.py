"""Image files a hostile post may point at: every format Pillow writes, mutated (truncated, bytes flipped, junk
spliced in), and headers claiming absurd dimensions. Plain functions of a ``random.Random`` (the integration test
draws from a seed) wrapped as hypothesis strategies (the property tests)."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

from hypothesis import strategies as st
from PIL import Image

# Formats Pillow can both write here and (mostly) open; the decoder must survive all of them, allowed or not.
WRITABLE_FORMATS = (
    "BMP",
    "DIB",
    "GIF",
    "ICO",
    "IM",
    "JPEG",
    "JPEG2000",
    "MSP",
    "PCX",
    "PNG",
    "PPM",
    "QOI",
    "SGI",
    "SPIDER",
    "TGA",
    "TIFF",
    "WEBP",
    "XBM",
    "BLP",
    "DDS",
    "ICNS",
    "AVIF",
)
MODES = ("RGB", "L", "1", "RGBA", "P", "I", "F", "CMYK", "LA")


def encoded_images() -> list[bytes]:
    """One small picture per writable format and mode it accepts."""
    rng = random.Random(7)
    files = []
    for fmt in WRITABLE_FORMATS:
        for mode in MODES:
            size = (rng.randint(1, 40), rng.randint(1, 40))
            image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).convert(mode)
            buffer = io.BytesIO()
            try:
                with warnings.catch_warnings():  # Pillow deprecates writing some modes; the files still test decoding
                    warnings.simplefilter("ignore", DeprecationWarning)
                    image.save(buffer, format=fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # this format does not take this mode
            files.append(buffer.getvalue())
    return files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def absurd_header(fmt: str, width: int, height: int, rng: random.Random) -> bytes:
    """A well-formed header claiming ``width``×``height`` pixels, followed by a little random data."""
    tail = rng.randbytes(rng.randint(0, 64))
    if fmt == "PNG":
        header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(tail)) + _png_chunk(b"IEND", b"")
    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", width & 0xFFFF, height & 0xFFFF) + b"\x00\x00\x00," + tail
    # BMP: width and height are signed 32-bit (a negative height means top-down rows).
    info = struct.pack("<IiiHHIIiiII", 40, width & 0x7FFFFFFF, -(height & 0x7FFFFFFF), 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(tail), 0, 0, 54) + info + tail


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: truncated, a few bytes flipped, junk spliced in, the header overwritten."""
    if not data:
        return rng.randbytes(16)
    choice = rng.randrange(4)
    if choice == 0:
        return data[: rng.randrange(len(data))]
    buffer = bytearray(data)
    if choice == 1:
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    if choice == 2:
        at = rng.randrange(len(buffer) + 1)
        return bytes(buffer[:at] + rng.randbytes(rng.randint(1, 64)) + buffer[at:])
    header = min(len(buffer), 32)
    buffer[rng.randrange(header)] = rng.randrange(256)
    return bytes(buffer)


def hostile_image(rng: random.Random, corpus: list[bytes]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(corpus)
    if kind == 1:
        return mutate(rng.choice(corpus), rng)
    if kind == 2:
        side = rng.choice([0, 1, 2**14, 2**16 - 1, 2**31 - 1])
        return absurd_header(rng.choice(["PNG", "GIF", "BMP"]), side, rng.choice([0, 1, side, 2**31 - 1]), rng)
    return rng.randbytes(rng.randint(0, 256))


def hostile_images(corpus: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(corpus),
        st.tuples(st.sampled_from(corpus), st.randoms(use_true_random=False)).map(lambda pair: mutate(*pair)),
        st.builds(
            absurd_header,
            st.sampled_from(["PNG", "GIF", "BMP"]),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.randoms(use_true_random=False),
        ),
        st.binary(max_size=512),
    )
