"""The web chat page at ``GET /``: one self-contained HTML file and the headers to send it with.

The page (``static/chat.html``) carries its style and script inline and talks only to the public
API on the same origin. Its Content-Security-Policy allows exactly that inline script and style,
by their SHA-256 hashes, computed here from the file when it is first read, so editing the page
never breaks the policy. Inline event-handler attributes (``onclick=``) would be refused by it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib.resources import files

_INLINE = {tag: re.compile(rb"<%s>(.*?)</%s>" % (tag, tag), re.S) for tag in (b"script", b"style")}


def _hash_of_only(html: bytes, tag: bytes) -> str:
    """``'sha256-...'`` of the page's one inline ``<tag>`` element's text (CSP's hash source)."""
    blocks = _INLINE[tag].findall(html)
    if len(blocks) != 1 or html.count(b"<" + tag) != 1:
        raise ValueError(f"chat.html must hold exactly one plain <{tag.decode()}> element")
    return "'sha256-" + base64.b64encode(hashlib.sha256(blocks[0]).digest()).decode() + "'"


@lru_cache(maxsize=1)
def _page() -> tuple[bytes, tuple[tuple[str, str], ...]]:
    html = (files("graft.serve") / "static" / "chat.html").read_bytes()
    csp = (
        "default-src 'none'; "
        f"script-src {_hash_of_only(html, b'script')}; "
        f"style-src {_hash_of_only(html, b'style')}; "
        "img-src 'self' data: blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = (
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", csp),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    )
    return html, headers


def page_response() -> tuple[bytes, dict[str, str]]:
    """The chat page's HTML bytes and its response headers (a fresh dict each call)."""
    html, headers = _page()
    return html, dict(headers)
