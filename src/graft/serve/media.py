"""Image URLs from chat requests to decoded RGB images, under a ``MediaPolicy``.

``load_image_url`` takes the three kinds of URL a request may carry:

* ``data:image/<type>;base64,<payload>``: always accepted. The payload's length is checked
  against ``max_image_bytes`` before any base64 is decoded.
* ``http(s)://``: only with ``allow_remote``. The host is resolved here and every address it
  resolves to must be public (``_is_public_address``); with ``allowed_domains`` it must also be one
  of them or a subdomain. The request goes to the checked address (original ``Host`` header, TLS
  verified against the original name through SNI), so DNS rebinding cannot redirect it. Redirects
  are followed by hand, at most ``max_redirects``, each new URL checked like the first. The body is
  streamed and dropped once it passes ``max_image_bytes``; the whole fetch has ``fetch_timeout_s``.
  Proxy settings from the environment are ignored.
* ``file://``: only with ``local_root``: an absolute path without ``..`` whose real path (symlinks
  followed) lies below the root, a regular file no larger than ``max_image_bytes``.

Every image is opened by Pillow (PNG, JPEG, WEBP, GIF and BMP only) and its width x height read
from the header and checked against ``max_image_pixels`` before any pixel is decoded; Pillow's own
decompression-bomb limit also counts. Decoding and file reads run in a worker thread.

Every refusal is a 400 ``APIError`` whose ``param`` is the request field and whose ``code`` is one
of ``invalid_image_url``, ``remote_media_disabled``, ``local_media_disabled``, ``media_forbidden``,
``media_fetch_failed``, ``image_too_large``, ``invalid_image``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from graft.processing import to_rgb
from graft.serve.errors import APIError
from graft.serve.settings import MediaPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: formats Pillow may try (no EPS/PDF-style plugins that call out to other programs)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_DATA_HEADER = re.compile(r"image/[a-z0-9.+-]+;base64", re.IGNORECASE)
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", re.IGNORECASE)
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: warnings.catch_warnings is process-wide state: one thread at a time changes it here
_open_lock = threading.Lock()


@dataclass(frozen=True)
class LoadedImage:
    """One decoded image and what identifies it."""

    image: Image.Image  #: fully decoded, mode RGB
    digest: str  #: sha256 hex of the encoded bytes
    nbytes: int  #: encoded size


async def load_image_url(url: str, policy: MediaPolicy, param: str) -> LoadedImage:
    """The image ``url`` names, checked against ``policy``; a 400 ``APIError`` for any refusal."""
    if not isinstance(url, str) or not url:
        raise _refuse("invalid_image_url", param, "expected a non-empty image URL")
    scheme, colon, _ = url[:16].partition(":")
    scheme = scheme.lower() if colon else ""
    if scheme == "data":
        payload_at = _check_data_url(url, policy, param)
        return await asyncio.to_thread(_decode_data_url, url, payload_at, policy, param)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise _refuse("remote_media_disabled", param, "remote image URLs are disabled on this server")
        data = await _fetch_remote(url, policy, param)
        return await asyncio.to_thread(_decode, data, policy, param)
    if scheme == "file":
        if policy.local_root is None:
            raise _refuse("local_media_disabled", param, "file:// image URLs are disabled on this server")
        return await asyncio.to_thread(_read_local, url, policy.local_root, policy, param)
    shown = f"{scheme}:" if scheme else "no scheme"
    raise _refuse(
        "invalid_image_url", param, f"unsupported image URL ({shown}); use data:, http(s): or file:"
    )


def _refuse(code: str, param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", code, param)


def _too_large(param: str, what: str, policy: MediaPolicy) -> APIError:
    return _refuse("image_too_large", param, f"{what} is over the limit of {policy.max_image_bytes} bytes")


def _check_data_url(url: str, policy: MediaPolicy, param: str) -> int:
    """Where the base64 payload starts; refuses a bad header or a payload too long, undecoded."""
    comma = url.find(",", 5, 256)
    if comma < 0 or not _DATA_HEADER.fullmatch(url, 5, comma):
        raise _refuse("invalid_image_url", param, "expected data:image/<type>;base64,<data>")
    if (len(url) - comma - 1) // 4 * 3 - 2 > policy.max_image_bytes:
        raise _too_large(param, "the image data", policy)
    return comma + 1


def _decode_data_url(url: str, payload_at: int, policy: MediaPolicy, param: str) -> LoadedImage:
    try:
        data = base64.b64decode(url[payload_at:], validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("invalid_image_url", param, "the data URL's payload is not valid base64") from None
    if len(data) > policy.max_image_bytes:
        raise _too_large(param, "the image data", policy)
    return _decode(data, policy, param)


def _decode(data: bytes, policy: MediaPolicy, param: str) -> LoadedImage:
    """Decodes ``data`` to RGB after checking the pixel count its header gives."""
    too_many = f"image has more pixels than the limit of {policy.max_image_pixels}"
    try:
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(BytesIO(data), formats=IMAGE_FORMATS)
        with im:
            width, height = im.size
            if width * height > policy.max_image_pixels:
                raise _refuse("image_too_large", param, f"{too_many} ({width}x{height})")
            rgb = to_rgb(im)  # as training reads it: 16-bit grey scaled, not clipped
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse("image_too_large", param, too_many) from None
    except APIError:
        raise
    except UnidentifiedImageError:
        raise _refuse("invalid_image", param, f"not an image in {', '.join(IMAGE_FORMATS)}") from None
    except Exception as e:  # untrusted bytes: any decoder failure is the client's bad image
        raise _refuse("invalid_image", param, f"a damaged image ({e})") from None
    return LoadedImage(rgb, hashlib.sha256(data).hexdigest(), len(data))


def _read_local(url: str, root: Path, policy: MediaPolicy, param: str) -> LoadedImage:
    """Reads a ``file://`` URL's file if it lies below ``root``, then decodes it."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/") or "\0" in path:
        raise _refuse("invalid_image_url", param, "expected file:///absolute/path")
    forbidden = f"{path} is outside the folder this server reads images from"
    if ".." in path.split("/"):
        raise _refuse("media_forbidden", param, forbidden)
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root.resolve()):
        raise _refuse("media_forbidden", param, forbidden)
    try:  # O_NONBLOCK: a FIFO must not hang the thread; it is refused below as not a regular file
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _refuse("media_fetch_failed", param, f"{path} is not a regular file")
            if info.st_size > policy.max_image_bytes:
                raise _too_large(param, "the image file", policy)
            data = f.read(policy.max_image_bytes + 1)
    except OSError as e:
        raise _refuse("media_fetch_failed", param, f"cannot read {path} ({e.strerror})") from None
    if len(data) > policy.max_image_bytes:
        raise _too_large(param, "the image file", policy)
    return _decode(data, policy, param)


def _is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address (an IPv4 inside IPv6 is judged as that IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return _is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not _is_public_address(ip.sixtofour):
            return False
    private = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (private or ip.is_reserved or ip.is_unspecified)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # built once: loading the CA bundle takes ~20 ms


def _client(policy: MediaPolicy) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=False, follow_redirects=False, timeout=policy.fetch_timeout_s, verify=_ssl_context()
    )


async def _fetch_remote(url: str, policy: MediaPolicy, param: str) -> bytes:
    """The body at ``url`` (redirects followed by hand), every failure turned into an ``APIError``."""
    failed = "could not fetch the image"
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError):
        raise _refuse("invalid_image_url", param, "malformed image URL") from None
    try:
        return await asyncio.wait_for(_fetch(target, policy, param), policy.fetch_timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise _refuse(
            "media_fetch_failed", param, f"{failed}: timed out ({policy.fetch_timeout_s:g} s)"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, OSError) as e:
        raise _refuse("media_fetch_failed", param, f"{failed}: {type(e).__name__}: {e}") from None


async def _fetch(target: httpx.URL, policy: MediaPolicy, param: str) -> bytes:
    async with _client(policy) as client:
        for _ in range(policy.max_redirects + 1):
            host = target.raw_host.decode("ascii")
            ip = await _check_remote(target, host, policy, param)
            request_url = target.copy_with(host=str(ip))
            headers = {"Host": target.netloc.decode("ascii"), **_HEADERS}
            extensions = {"sni_hostname": host} if target.scheme == "https" else {}
            async with client.stream("GET", request_url, headers=headers, extensions=extensions) as response:
                if response.has_redirect_location:
                    target = target.join(response.headers["Location"])
                    continue
                if not response.is_success:
                    status = response.status_code
                    raise _refuse("media_fetch_failed", param, f"the image URL answered HTTP {status}")
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > policy.max_image_bytes:
                    raise _too_large(param, "the downloaded image", policy)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_image_bytes:
                        raise _too_large(param, "the downloaded image", policy)
                return bytes(body)
    raise _refuse("media_fetch_failed", param, f"more than {policy.max_redirects} redirects")


async def _check_remote(target: httpx.URL, host: str, policy: MediaPolicy, param: str) -> IPAddress:
    """The address to connect to for ``target``, after its scheme, domain and addresses pass."""
    if target.scheme not in ("http", "https"):
        raise _refuse("media_forbidden", param, "redirected to a non-http(s) URL")
    port = target.port or (443 if target.scheme == "https" else 80)
    if not (_HOSTNAME.fullmatch(host) or ":" in host) or not 0 < port < 65536:
        raise _refuse("invalid_image_url", param, "malformed host or port in the image URL")
    name = host.lower().rstrip(".")
    domains = [d.lower().strip(".") for d in policy.allowed_domains]
    if domains and not any(name == d or name.endswith("." + d) for d in domains):
        raise _refuse("media_forbidden", param, f"images are not fetched from {name}")
    addresses = await _resolve(host, port)
    if not addresses:
        raise _refuse("media_fetch_failed", param, f"{name} does not resolve")
    if not all(_is_public_address(ip) for ip in addresses):
        raise _refuse("media_forbidden", param, f"{name} resolves to a non-public address")
    return addresses[0]
