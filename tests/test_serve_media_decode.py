"""graft.serve.media on data: and file:// URLs: decoding, byte and pixel limits, decompression
bombs, malformed or disabled URLs, and file:// paths kept under the local root."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import struct
import threading
import time
import warnings
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from graft.serve import media
from graft.serve.media import LoadedImage, load_image_url
from graft.serve.settings import MediaPolicy

from media_fixtures import PARAM, PNG, _image_bytes, load, refused


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@functools.cache
def _bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of width x height that compresses to a few dozen KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = bytes(1 + (width + 7) // 8) * 500  # filter byte + packed pixels, 500 rows at a time
    idat = b"".join(z.compress(rows) for _ in range(height // 500)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- data: URLs and decoding -------------------------------------------------------------------


def test_png_data_url_decodes_to_rgb_with_digest() -> None:
    loaded = load(_data_url(PNG))
    assert loaded.image.mode == "RGB" and loaded.image.size == (8, 6)
    assert loaded.image.getpixel((0, 0)) == (10, 120, 200)
    assert loaded.digest == hashlib.sha256(PNG).hexdigest()
    assert loaded.nbytes == len(PNG)


def test_a_16_bit_grey_png_is_decoded_as_training_decodes_it() -> None:
    ramp = Image.fromarray(np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64))
    buffer = BytesIO()
    ramp.save(buffer, "PNG")
    loaded = load(_data_url(buffer.getvalue()))
    assert loaded.image.mode == "RGB"
    mean = np.asarray(loaded.image).mean()
    assert 120 < mean < 135, mean  # a ramp over the whole range, not clipped to white (mean 254)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_data_url(mode: str) -> None:
    jpeg = _image_bytes("JPEG", (16, 10), mode)
    loaded = load(_data_url(jpeg, "IMAGE/JPEG").replace(";base64,", ";BASE64,"))
    assert loaded.image.mode == "RGB" and loaded.image.size == (16, 10)
    assert loaded.digest == hashlib.sha256(jpeg).hexdigest()


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;base64",
        "data:;base64,aGVsbG8=",
        "data:image/png;base64,@@@@",
        "data:image/png;base64,aGVsbG8",  # no padding
        "data:image/png;base64,ÿÿÿÿ",
    ],
)
def test_malformed_data_urls(url: str) -> None:
    refused(url, "invalid_image_url")


def test_data_url_size_is_checked_before_base64_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("base64 was decoded")

    monkeypatch.setattr(media.base64, "b64decode", no_decoding)
    start = time.perf_counter()
    err = refused("data:image/png;base64," + "A" * 100_000_000, "image_too_large")
    assert time.perf_counter() - start < 1.0
    assert "10485760 bytes" in err.message


def test_data_url_size_limit_is_exact() -> None:
    assert load(_data_url(PNG), max_image_bytes=len(PNG)).nbytes == len(PNG)
    refused(_data_url(PNG), "image_too_large", max_image_bytes=len(PNG) - 1)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", PNG[: len(PNG) // 2], _image_bytes("TIFF")],
    ids=["empty", "text", "truncated", "tiff-not-allowed"],
)
def test_undecodable_images(data: bytes) -> None:
    refused(_data_url(data), "invalid_image")


def test_pixel_limit_from_the_header() -> None:
    assert load(_data_url(PNG), max_image_pixels=48).image.size == (8, 6)
    err = refused(_data_url(PNG), "image_too_large", max_image_pixels=47)
    assert "8x6" in err.message


def _refused_quietly(data: bytes, **policy: object) -> float:
    """Seconds it took to refuse ``data`` as too large, asserting no warning got out."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        refused(_data_url(data), "image_too_large", **policy)
        elapsed = time.perf_counter() - start
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    return elapsed


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = _bomb_png(20_000, 20_000)  # 400 Mpixels, 1.2 GB as RGB
    assert len(bomb) < 100_000
    assert _refused_quietly(bomb) < 1.0  # Pillow's own DecompressionBombError
    assert _refused_quietly(_bomb_png(5_000, 5_000)) < 1.0  # 25 Mpixels: the policy's limit


def test_pillow_bomb_warning_is_a_refusal_not_a_print() -> None:
    # 100 Mpixels: under a generous policy limit but over Pillow's warning threshold (~89 Mpixels)
    assert _refused_quietly(_bomb_png(10_000, 10_000), max_image_pixels=200_000_000) < 1.0


def test_decoding_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []
    decode = media._decode

    def recording(*args: object) -> LoadedImage:
        threads.append(threading.get_ident())
        return decode(*args)

    monkeypatch.setattr(media, "_decode", recording)

    async def main() -> list[LoadedImage]:
        policy = MediaPolicy()
        return await asyncio.gather(*(load_image_url(_data_url(PNG), policy, PARAM) for _ in range(3)))

    assert len(asyncio.run(main())) == 3
    assert threads and threading.get_ident() not in threads


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "javascript:alert(1)", "a.png", "//example.com/a.png", "", None]
)
def test_unsupported_urls(url: str) -> None:
    refused(url, "invalid_image_url")


def test_remote_and_local_are_off_by_default() -> None:
    refused("https://example.com/a.png", "remote_media_disabled")
    refused("HTTP://example.com/a.png", "remote_media_disabled")
    refused("file:///tmp/a.png", "local_media_disabled")


# --- file:// URLs ----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "my image.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(PNG)
    return tmp_path / "root"


def test_file_url_under_the_root(root) -> None:
    loaded = load(f"file://{root}/sub/my%20image.png", local_root=root)
    assert loaded.digest == hashlib.sha256(PNG).hexdigest() and loaded.image.mode == "RGB"
    (root / "inside-link.png").symlink_to(root / "sub" / "my image.png")
    assert load(f"file://localhost{root}/inside-link.png", local_root=root).nbytes == len(PNG)


def test_file_urls_outside_the_root(root) -> None:
    refused(f"file://{root.parent}/outside.png", "media_forbidden", local_root=root)
    refused(f"file://{root}/sub/../sub/my%20image.png", "media_forbidden", local_root=root)
    refused(f"file://{root}/sub/%2e%2e/sub/my%20image.png", "media_forbidden", local_root=root)
    (root / "escape.png").symlink_to(root.parent / "outside.png")
    refused(f"file://{root}/escape.png", "media_forbidden", local_root=root)
    (root / "escape-dir").symlink_to(root.parent)
    refused(f"file://{root}/escape-dir/outside.png", "media_forbidden", local_root=root)


def test_file_url_failures(root) -> None:
    refused(f"file://{root}/missing.png", "media_fetch_failed", local_root=root)
    refused(f"file://{root}/sub", "media_fetch_failed", local_root=root)
    os.mkfifo(root / "fifo.png")  # must not block the reading thread
    refused(f"file://{root}/fifo.png", "media_fetch_failed", local_root=root)
    refused(f"file://{root}/sub/my%20image.png", "image_too_large", local_root=root, max_image_bytes=10)
    (root / "note.png").write_text("not an image")
    refused(f"file://{root}/note.png", "invalid_image", local_root=root)


@pytest.mark.parametrize("url", ["file:a.png", "file://otherhost/a.png", "file:///a%00.png"])
def test_malformed_file_urls(root, url: str) -> None:
    refused(url, "invalid_image_url", local_root=root)
