"""Load on ``graft serve``: N concurrent streaming clients, at several concurrencies, in one run.

Each level sends ``--requests`` chat requests (an image and a short question each, greedy,
``--max-tokens`` long) from ``concurrency`` clients that each send their next request as soon as
the last one ended. Per level it prints requests/s, time to first token (median and p90) and
generated tokens/s over the whole level; the last line is the ratio of batched to one-at-a-time
throughput (tokens/s at ``--ratio-at`` clients over tokens/s at one client).

    python benchmarks/serve_load.py runs/demo/stage2            # starts graft serve itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000  # a server already running
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
from PIL import Image, ImageDraw

QUESTIONS = [
    "Is there a red circle in the image?",
    "How many objects are there?",
    "What colour is the square?",
    "Describe the image briefly.",
]


def images(n: int, size: int = 96) -> list[str]:
    """``n`` different pictures of coloured shapes, as PNG data URLs."""
    rng = np.random.default_rng(0)
    urls = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, size - 30, 2))
            r = int(rng.integers(8, 28))
            draw.ellipse((x, y, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


async def one_request(
    client: openai.AsyncOpenAI, model: str, index: int, pictures: list[str], max_tokens: int
):
    """(time to first token, generated tokens) of one streamed request."""
    content = [
        {"type": "image_url", "image_url": {"url": pictures[index % len(pictures)]}},
        {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]},
    ]
    started, first, tokens = time.perf_counter(), None, 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first if first is not None else time.perf_counter() - started, tokens


async def level(
    url: str, key: str, concurrency: int, requests: int, max_tokens: int, pictures: list[str]
) -> dict:
    queue = iter(range(requests))
    results: list[tuple[float, int]] = []
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600) as client:
        model = (await client.models.list()).data[0].id

        async def worker() -> None:
            for index in queue:
                results.append(await one_request(client, model, index, pictures, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "concurrency": concurrency,
        "requests_per_s": requests / seconds,
        "ttft_p50": statistics.median(ttft),
        "ttft_p90": ttft[int(0.9 * (len(ttft) - 1))],
        "tokens_per_s": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
    }


def start_server(model_dir: Path, max_batch_size: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "graft.cli", "-q", "serve", str(model_dir), "--port", str(port)]
    command += ["--max-batch-size", str(max_batch_size)]
    proc = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"graft serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("graft serve did not become ready in 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", type=Path, help="a model folder to serve (else --url)")
    parser.add_argument("--url", help="a running server's base URL")
    parser.add_argument("--api-key", default=os.environ.get("GRAFT_API_KEY", "none"))
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16, help="when this script starts the server")
    parser.add_argument("--ratio-at", type=int, default=8, help="the batched side of the ratio")
    args = parser.parse_args()
    if (args.model is None) == (args.url is None):
        parser.error("give a model folder or --url")
    proc, url = (None, args.url) if args.url else start_server(args.model, args.max_batch_size)
    levels = sorted({int(c) for c in args.concurrency.split(",")} | {1, args.ratio_at})
    pictures = images(8)
    try:
        asyncio.run(level(url, args.api_key, 2, 4, args.max_tokens, pictures))  # warm-up: caches, allocator
        rows = {}
        for c in levels:
            rows[c] = r = asyncio.run(level(url, args.api_key, c, args.requests, args.max_tokens, pictures))
            print(
                f"concurrency={c:<3d} requests/s={r['requests_per_s']:.2f} ttft_p50={r['ttft_p50']:.3f}s "
                f"ttft_p90={r['ttft_p90']:.3f}s tokens/s={r['tokens_per_s']:.1f} "
                f"({r['tokens']} tokens in {r['seconds']:.1f} s)",
                flush=True,
            )
        ratio = rows[args.ratio_at]["tokens_per_s"] / rows[1]["tokens_per_s"]
        print(f"ratio={ratio:.2f} (tokens/s at concurrency {args.ratio_at} over concurrency 1)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
