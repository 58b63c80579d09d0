"""The web chat page (``graft.serve.page``) in headless Chromium against ``fake_chat_server``.

The helpers (``open_chat``, ``attach``, ``ask``, ``wait_answer``) take a Playwright page and a base
URL only, so the same steps can drive the page served by the real ``graft serve`` app.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.serve.page import page_response

from asgi_thread import serve_in_thread
from fake_chat_server import FAIL_MESSAGE, XSS_ANSWER, FakeChat

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # the non-browser test below still runs
    sync_playwright = None

VIEWPORT = {"width": 1280, "height": 800}


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def small_png() -> bytes:
    image = Image.new("RGB", (64, 48), "teal")
    image.paste((250, 200, 40), (10, 10, 30, 30))
    return png_bytes(image)


def noisy_png(width: int = 900, height: int = 700) -> bytes:
    """Noise stays far above 100 kB even as a 768-px JPEG, so the fake server refuses it."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def watch_console(page: Page) -> list[str]:
    """Console errors and uncaught page errors, collected as they come."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.append(f"pageerror: {e}"))
    return seen


def open_chat(page: Page, base_url: str, state: str = "ready") -> None:
    """Load the page and wait until it has asked ``/v1/models`` (``body[data-state]``)."""
    response = page.goto(base_url + "/")
    assert response is not None and response.ok
    expect(page.locator("body")).to_have_attribute("data-state", state)


def attach(page: Page, *images: tuple[str, bytes]) -> None:
    """Pick images with the file input and wait for their thumbnails."""
    before = page.locator("#thumbs .thumb").count()
    page.set_input_files("#file", [{"name": n, "mimeType": "image/png", "buffer": b} for n, b in images])
    expect(page.locator("#thumbs .thumb")).to_have_count(before + len(images))


_DROP_OR_PASTE = """([b64, kind]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], kind + '.png', { type: 'image/png' }));
  const init = { bubbles: true, cancelable: true };
  const ev = kind === 'drop' ? new DragEvent('drop', { ...init, dataTransfer: dt })
    : new ClipboardEvent('paste', { ...init, clipboardData: dt });
  document.getElementById('prompt').dispatchEvent(ev);
}"""


def drop_or_paste(page: Page, png: bytes, kind: str) -> None:
    """Drop (``kind="drop"``) or paste (``"paste"``) one PNG onto the composer; wait for its thumbnail."""
    before = page.locator("#thumbs .thumb").count()
    page.evaluate(_DROP_OR_PASTE, [base64.b64encode(png).decode(), kind])
    expect(page.locator("#thumbs .thumb")).to_have_count(before + 1)


def ask(page: Page, text: str) -> Locator:
    """Type ``text``, press Enter and return the new assistant bubble."""
    n = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    return page.locator(".msg.assistant").nth(n)


def wait_answer(bubble: Locator, state: str = "done") -> str:
    expect(bubble).to_have_attribute("data-state", state)
    return bubble.locator(".text").inner_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if sync_playwright is None or exe is None:
        pytest.skip(
            "needs the playwright package and a Chromium: pip install playwright; apt-get install chromium"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeChat, str]]:
    chat = FakeChat()
    with serve_in_thread(chat.app()) as url:
        yield chat, url


@pytest.fixture
def page(browser: Browser, fake: tuple[FakeChat, str]) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(5000)
    page = context.new_page()
    page.console = watch_console(page)  # type: ignore[attr-defined]
    open_chat(page, fake[1])
    yield page
    context.close()


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("GRAFT_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp())
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_page_response_headers_and_csp_hashes() -> None:
    html, headers = page_response()
    text = html.decode()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert csp[directive] == f"'sha256-{digest}'"
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["form-action"] == "'none'"
    assert not re.search(r"\son[a-z]+\s*=", text), "inline event handlers are refused by the CSP"
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), "the page must work offline"
    assert " style=" not in text, "inline style attributes are refused by the CSP"


def test_image_question_streams_and_sends_the_image(
    page: Page, fake: tuple[FakeChat, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    chat, _ = fake
    png = small_png()
    attach(page, ("square.png", png))
    page.fill("#prompt", "line one")
    page.press("#prompt", "Shift+Enter")
    page.type("#prompt", "line two")
    assert page.input_value("#prompt") == "line one\nline two"
    bubble = ask(page, "What is in the picture?")
    # token by token: part of the answer shows while Send is disabled
    expect(page.locator("#send")).to_be_disabled()
    expect(page.locator("#stop")).to_be_visible()
    bubble.wait_for()
    partial = "(b) => b.dataset.state === 'streaming' && b.textContent.startsWith('Answer')"
    page.wait_for_function(partial, arg=bubble.element_handle())
    assert wait_answer(bubble) == "Answer 1: I see 1 image(s) in 1 message(s)."
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#thumbs .thumb")).to_have_count(0)
    expect(page.locator(".msg.user img")).to_have_count(1)

    body = chat.requests[-1]
    assert body["stream"] is True and body["model"] == "fake-vlm"
    assert body["temperature"] == 0.7 and body["max_tokens"] == 256
    (turn,) = body["messages"]
    assert turn["role"] == "user"
    assert turn["content"][0] == {"type": "text", "text": "What is in the picture?"}
    image_url = "data:image/png;base64," + base64.b64encode(png).decode()  # small: sent as it is
    assert turn["content"][1] == {"type": "image_url", "image_url": {"url": image_url}}

    shot = artifacts_dir(tmp_path_factory) / "serve_page.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    page.set_viewport_size({"width": 380, "height": 700})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.console == []  # type: ignore[attr-defined]


def test_second_turn_resends_history(page: Page, fake: tuple[FakeChat, str]) -> None:
    chat, _ = fake
    drop_or_paste(page, small_png(), "drop")
    drop_or_paste(page, small_png(), "paste")
    first = wait_answer(ask(page, "first question"))
    page.click("#settings summary")
    page.fill("#temperature", "0.2")
    page.fill("#max-tokens", "40")
    assert wait_answer(ask(page, "second question")) == "Answer 2: I see 2 image(s) in 3 message(s)."
    body = chat.requests[-1]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 40
    user1, assistant, user2 = body["messages"]
    assert [p["type"] for p in user1["content"]] == ["text", "image_url", "image_url"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in user1["content"][1:])
    assert assistant == {"role": "assistant", "content": first}
    assert user2 == {"role": "user", "content": [{"type": "text", "text": "second question"}]}

    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    assert wait_answer(ask(page, "fresh start")) == "Answer 1: I see 0 image(s) in 1 message(s)."
    assert page.console == []  # type: ignore[attr-defined]


def test_stop_keeps_the_partial_answer(page: Page, fake: tuple[FakeChat, str]) -> None:
    chat, _ = fake
    chat.hung_up.clear()
    bubble = ask(page, "SLOW please")
    expect(bubble.locator(".text")).to_contain_text("tick2")
    page.click("#stop")
    partial = wait_answer(bubble, "stopped")
    assert partial.startswith("tick0 tick1 tick2")
    expect(bubble.locator(".note")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_hidden()
    assert chat.hung_up.wait(5), "the server did not see the client hang up"
    page.wait_for_timeout(200)
    assert bubble.locator(".text").inner_text() == partial  # nothing arrives after Stop
    wait_answer(ask(page, "and now?"))
    assert chat.requests[-1]["messages"][1] == {"role": "assistant", "content": partial}


def test_markup_in_answers_and_errors_is_text(page: Page) -> None:
    bubble = ask(page, "XSS")
    assert wait_answer(bubble) == XSS_ANSWER
    expect(bubble.locator("img, script")).to_have_count(0)

    bubble = ask(page, "FAIL")
    assert wait_answer(bubble, "error") == "Partial answer "
    expect(page.locator(".msg.error")).to_have_text(FAIL_MESSAGE)
    expect(page.locator(".msg.error img")).to_have_count(0)
    page.wait_for_timeout(100)
    assert page.evaluate("window.__xss") is None


def test_over_limit_image_shows_the_server_message(page: Page, fake: tuple[FakeChat, str]) -> None:
    chat, _ = fake
    attach(page, ("noise.png", noisy_png()))
    ask(page, "too big?")
    error = page.locator(".msg.error")
    expect(error).to_contain_text("this server takes at most 100000")
    url = chat.requests[-1]["messages"][-1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")  # redrawn: longest side 768
    shrunk = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))
    assert shrunk.size == (768, 597)
    expect(error).to_have_text(re.compile(r"^Image 1 is \d+ bytes; this server takes at most 100000\.$"))
    # refused: not part of the conversation, text and image back in the composer
    expect(page.locator(".msg.assistant")).to_have_count(0)
    expect(page.locator(".msg.user.unsent")).to_have_count(1)
    assert page.input_value("#prompt") == "too big?"
    expect(page.locator("#thumbs .thumb")).to_have_count(1)
    page.click("#thumbs .thumb button")
    expect(page.locator("#thumbs .thumb")).to_have_count(0)
    assert wait_answer(ask(page, "without it")) == "Answer 1: I see 0 image(s) in 1 message(s)."


def test_api_key_is_asked_after_401(browser: Browser) -> None:
    chat = FakeChat(api_key="s3cret")
    with serve_in_thread(chat.app()) as url:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(5000)
        page = context.new_page()
        console = watch_console(page)
        open_chat(page, url, state="need-key")
        expect(page.locator("#api-key")).to_be_visible()
        expect(page.locator("#notice")).to_contain_text("Invalid or missing API key.")
        page.fill("#api-key", "s3cret")
        page.click("#key-save")
        expect(page.locator("body")).to_have_attribute("data-state", "ready")
        expect(page.locator("#notice")).to_be_hidden()
        assert wait_answer(ask(page, "hello")) == "Answer 1: I see 0 image(s) in 1 message(s)."
        assert chat.auth[-1] == "Bearer s3cret"
        assert page.evaluate("localStorage.length") == 0
        context.close()
    assert not [c for c in console if "Content Security Policy" in c]


def test_the_real_server_answers_the_page(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The page against ``graft serve`` itself (a tiny model): the streamed answer equals the API's
    greedy answer to the same message, and an over-limit image shows the server's own error."""
    import openai

    from graft.serve.settings import MediaPolicy, ServeSettings

    from serve_fixtures import running_server, save_sensitive_model

    model = save_sensitive_model(tmp_path_factory.mktemp("page") / "tiny-vlm")
    settings = ServeSettings(port=0, media=MediaPolicy(max_image_bytes=50_000))
    with running_server(model, settings) as (url, _):
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(20000)
        page = context.new_page()
        console = watch_console(page)
        open_chat(page, url)
        page.click("#settings summary")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "12")
        png = small_png()
        attach(page, ("square.png", png))
        answer = wait_answer(ask(page, "What is in the picture?"))
        content = [
            {"type": "text", "text": "What is in the picture?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
            },
        ]
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none").chat.completions.create(
            model="tiny-vlm", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=12
        )
        assert answer == api.choices[0].message.content.strip() and answer
        page.screenshot(path=str(artifacts_dir(tmp_path_factory) / "serve_page_real.png"))

        attach(page, ("noise.png", noisy_png()))
        ask(page, "and this one?")
        expect(page.locator(".msg.error")).to_contain_text("50000")
        context.close()
    # the refused request's 400 is logged by the browser itself; nothing else may be
    assert [c for c in console if "status of 400" not in c] == []
