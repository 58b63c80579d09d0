"""``graft serve``: an OpenAI-compatible API and a web chat page for a model folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail


@app.command("serve")
def serve_cmd(
    model_dir: Annotated[
        Path, typer.Argument(help="A graft model folder, or a plain causal LM folder (text only).")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs an API key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients send (default: the folder's name).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require `Authorization: Bearer KEY` (env GRAFT_API_KEY).", show_default=False),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host without an API key.")
    ] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="An origin allowed by CORS (repeatable).")
    ] = None,
    allow_remote_media: Annotated[
        bool, typer.Option(help="Fetch http(s) image URLs (public addresses only, size and time limits).")
    ] = False,
    media_domain: Annotated[
        list[str] | None, typer.Option(help="With --allow-remote-media: only these domains (repeatable).")
    ] = None,
    allowed_local_media: Annotated[
        Path | None, typer.Option(help="Accept file:// image URLs below this folder.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests decoded together.")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests waiting; more get 503 with Retry-After.")] = 64,
    max_images: Annotated[int, typer.Option(help="Images per request.")] = 8,
    grace_period: Annotated[float, typer.Option(help="Seconds in-flight requests get after SIGTERM.")] = 30.0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: accelerate's).")] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 on a GPU that has it), float32, bfloat16, float16.")
    ] = "auto",
    log_prompts: Annotated[
        bool, typer.Option(help="Log prompts and image digests (off: sizes only).")
    ] = False,
) -> None:
    """Serve MODEL_DIR: POST /v1/chat/completions (streaming too), GET /v1/models, /health,
    /metrics (Prometheus) and the web chat page at /. Batches concurrent requests; SIGTERM
    drains in-flight requests and exits 0."""
    try:
        from graft.serve.server import serve
    except ImportError as err:
        fail(f"graft serve needs its extra ({err.name} is missing): pip install 'graft[serve]'")
    from graft.serve.settings import MediaPolicy, ServeSettings

    media = MediaPolicy(
        allow_remote=allow_remote_media,
        allowed_domains=tuple(media_domain or ()),
        local_root=allowed_local_media,
    )
    try:
        settings = ServeSettings(
            host=host,
            port=port,
            served_model_name=served_model_name,
            api_key=api_key or os.environ.get("GRAFT_API_KEY") or None,
            insecure_no_auth=insecure_no_auth,
            cors_origins=tuple(cors_origin or ()),
            media=media,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            max_images_per_request=max_images,
            grace_period_s=grace_period,
            device=device,
            dtype=dtype,
            log_prompts=log_prompts,
        )
        serve(model_dir, settings)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
