"""Shared by the graft.serve.media tests (test_serve_media_decode.py, test_serve_media_remote.py):
load an image URL under a MediaPolicy, and check that a refusal is a 400 with its code."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from graft.serve.errors import APIError
from graft.serve.media import LoadedImage, load_image_url
from graft.serve.settings import MediaPolicy

PARAM = "messages[0].content[1].image_url.url"


def _image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 120, 200) if mode == "RGB" else 90).save(buf, fmt)
    return buf.getvalue()


PNG = _image_bytes()


def load(url: str, **policy: object) -> LoadedImage:
    return asyncio.run(load_image_url(url, MediaPolicy(**policy), PARAM))


def refused(url: str, code: str, **policy: object) -> APIError:
    with pytest.raises(APIError) as info:
        load(url, **policy)
    err = info.value
    assert (err.status, err.code, err.param) == (400, code, PARAM), err.message
    assert err.message.startswith(PARAM)
    return err
