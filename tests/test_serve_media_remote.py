"""graft.serve.media on http(s) URLs: fetches, redirects, size and time limits, allowed domains,
and the public-address check that every resolved and redirected-to address must pass.

Offline: remote fetches go to http.server instances on 127.0.0.1 and 127.0.0.2 (tests patch
``_is_public_address`` so that 127.0.0.1 counts as public and 127.0.0.2 does not), or to an
httpx.MockTransport where real public addresses are resolved by a patched ``_resolve``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from graft.serve import media

from media_fixtures import PNG, load, refused

# --- remote fetches against local servers ------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _dribble(self, seconds: float) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not srv.stopping.is_set():
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv: _Server = self.server  # type: ignore[assignment]
        srv.seen.append((self.path, self.headers["Host"]))
        try:
            if self.path == "/img.png":
                self._reply(200, PNG, {"Content-Type": "image/png"})
            elif self.path == "/redirect":
                self._reply(302, headers={"Location": "/img.png"})
            elif self.path.startswith("/loop"):
                self._reply(301, headers={"Location": f"/loop{len(srv.seen)}"})
            elif self.path == "/to-private":
                self._reply(307, headers={"Location": f"{srv.other}/img.png"})
            elif self.path == "/to-file":
                self._reply(302, headers={"Location": "file:///etc/passwd"})
            elif self.path == "/text":
                self._reply(200, b"<html>not an image</html>", {"Content-Type": "text/html"})
            elif self.path == "/huge":  # HTTP/1.0 without Content-Length: the body ends at close
                self.send_response(200)
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(bytes(16_384))
            elif self.path == "/big-length":  # announces a gigabyte, then sends nothing for 3 s
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.flush()
                srv.stopping.wait(3)
            elif self.path == "/slow":  # one byte every 50 ms: no single read times out
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self._dribble(3)
            else:
                self._reply(404, b"no such image")
        except OSError:  # the client hung up, as it should on a refused body
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.seen: list[tuple[str, str]] = []
        self.other = ""
        self.stopping = threading.Event()
        self.url = f"http://{host}:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers():
    try:
        public, private = _Server("127.0.0.1"), _Server("127.0.0.2")
    except OSError as e:  # pragma: no cover - 127/8 beyond 127.0.0.1 is Linux's
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    public.other = private.url
    for srv in (public, private):
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield public, private
    for srv in (public, private):
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def web(servers, monkeypatch: pytest.MonkeyPatch) -> _Server:
    """The 127.0.0.1 server, which counts as public; 127.0.0.2 (``web.other``) stays private."""
    for srv in servers:
        srv.seen.clear()
    monkeypatch.setattr(media, "_is_public_address", lambda ip: ip == ipaddress.ip_address("127.0.0.1"))
    return servers[0]


REMOTE = {"allow_remote": True}


def test_loopback_is_refused_by_default(servers) -> None:
    public, _ = servers
    public.seen.clear()
    err = refused(f"{public.url}/img.png", "media_forbidden", **REMOTE)
    assert "non-public" in err.message
    assert public.seen == []


def test_remote_fetch(web: _Server) -> None:
    loaded = load(f"{web.url}/img.png", **REMOTE)
    assert loaded.image.size == (8, 6) and loaded.image.mode == "RGB"
    assert loaded.digest == hashlib.sha256(PNG).hexdigest() and loaded.nbytes == len(PNG)
    assert web.seen == [("/img.png", web.url.removeprefix("http://"))]


def test_redirect_to_another_public_path(web: _Server) -> None:
    assert load(f"{web.url}/redirect", **REMOTE).digest == hashlib.sha256(PNG).hexdigest()
    assert [path for path, _ in web.seen] == ["/redirect", "/img.png"]


def test_redirect_to_a_private_address_is_refused(web: _Server, servers) -> None:
    refused(f"{web.url}/to-private", "media_forbidden", **REMOTE)
    assert servers[1].seen == []


def test_redirect_to_another_scheme_is_refused(web: _Server) -> None:
    refused(f"{web.url}/to-file", "media_forbidden", **REMOTE)


def test_too_many_redirects(web: _Server) -> None:
    err = refused(f"{web.url}/loop", "media_fetch_failed", max_redirects=2, **REMOTE)
    assert "redirects" in err.message
    assert len(web.seen) == 3
    refused(f"{web.url}/redirect", "media_fetch_failed", max_redirects=0, **REMOTE)


def test_streamed_body_over_the_limit(web: _Server) -> None:
    refused(f"{web.url}/huge", "image_too_large", max_image_bytes=100_000, **REMOTE)


def test_content_length_over_the_limit_is_refused_before_reading(web: _Server) -> None:
    start = time.perf_counter()
    refused(f"{web.url}/big-length", "image_too_large", fetch_timeout_s=5, **REMOTE)
    assert time.perf_counter() - start < 1.0


def test_the_whole_fetch_has_one_timeout(web: _Server) -> None:
    start = time.perf_counter()
    err = refused(f"{web.url}/slow", "media_fetch_failed", fetch_timeout_s=0.3, **REMOTE)
    assert time.perf_counter() - start < 1.5
    assert "timed out" in err.message


def test_non_image_body(web: _Server) -> None:
    refused(f"{web.url}/text", "invalid_image", **REMOTE)


def test_http_error_status(web: _Server) -> None:
    assert "404" in refused(f"{web.url}/nothing.png", "media_fetch_failed", **REMOTE).message


def test_connection_refused(web: _Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(f"http://127.0.0.1:{port}/img.png", "media_fetch_failed", **REMOTE)


def test_allowed_domains(web: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    refused(f"{web.url}/img.png", "media_forbidden", allowed_domains=("example.com",), **REMOTE)
    assert web.seen == []

    async def to_loopback(host: str, port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("127.0.0.1")]

    monkeypatch.setattr(media, "_resolve", to_loopback)
    port = web.server_address[1]
    policy = {"allowed_domains": ("Example.com.",), **REMOTE}
    for host in ("example.com", "img.EXAMPLE.com"):
        assert load(f"http://{host}:{port}/img.png", **policy).nbytes == len(PNG)
    # the request went to the checked address, under the name the URL gave
    assert [h for _, h in web.seen] == [f"example.com:{port}", f"img.example.com:{port}"]
    refused(f"http://badexample.com:{port}/img.png", "media_forbidden", **policy)
    refused(f"http://example.com.evil.net:{port}/img.png", "media_forbidden", **policy)


def test_every_resolved_address_must_be_public(web: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async def mixed(host: str, port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv4Address("127.0.0.2")]

    monkeypatch.setattr(media, "_resolve", mixed)
    refused(f"http://images.test:{web.server_address[1]}/img.png", "media_forbidden", **REMOTE)
    assert web.seen == []


# --- the request as sent, through a mock transport and the real address check --------------------


@pytest.fixture
def mock_web(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Hosts resolve to fake public/private addresses; requests are answered by a MockTransport."""
    addresses = {
        "img.example.com": "93.184.216.34",
        "cdn.example.net": "2606:4700::1",
        "intranet": "10.0.0.7",
    }
    sent: list[httpx.Request] = []

    async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(addresses[host])]

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/cdn":
            return httpx.Response(302, headers={"Location": "https://cdn.example.net/img.png"})
        if request.url.path == "/intranet":
            return httpx.Response(302, headers={"Location": "http://intranet/img.png"})
        return httpx.Response(200, content=PNG)

    monkeypatch.setattr(media, "_resolve", resolve)
    monkeypatch.setattr(
        media, "_client", lambda policy: httpx.AsyncClient(transport=httpx.MockTransport(answer))
    )
    return sent


def test_https_connects_to_the_checked_address_with_sni(mock_web: list[httpx.Request]) -> None:
    assert load("https://img.example.com/cdn", **REMOTE).nbytes == len(PNG)
    first, second = mock_web
    assert (first.url.host, first.url.scheme, first.headers["Host"]) == (
        "93.184.216.34",
        "https",
        "img.example.com",
    )
    assert first.extensions["sni_hostname"] == "img.example.com"
    assert (second.url.host, second.headers["Host"]) == ("2606:4700::1", "cdn.example.net")
    assert second.extensions["sni_hostname"] == "cdn.example.net"


def test_redirect_to_a_private_name_is_refused(mock_web: list[httpx.Request]) -> None:
    refused("http://img.example.com/intranet", "media_forbidden", **REMOTE)
    assert len(mock_web) == 1


def test_unresolvable_host(mock_web: list[httpx.Request]) -> None:
    refused("https://nowhere.invalid/img.png", "media_fetch_failed", **REMOTE)


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http://:80/a.png",
        "http://a b/",
        "http://exa[mple.com/a.png",
        "https://example.com:99999/a.png",
    ],
)
def test_malformed_remote_urls(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_lookup(host: str, port: int) -> list:
        raise AssertionError("a malformed URL was resolved")

    monkeypatch.setattr(media, "_resolve", no_lookup)
    refused(url, "invalid_image_url", **REMOTE)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("ff0e::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::7f00:1", False),
        ("2002:7f00:1::", False),
        ("2002:a00:1::", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert media._is_public_address(ipaddress.ip_address(address)) is public
