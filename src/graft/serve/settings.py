"""Every knob of ``graft serve`` in two dataclasses: what media a request may bring, and the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class MediaPolicy:
    """Where images may come from and how large they may be (checked before decoding).

    ``data:image/...;base64,`` URLs are always accepted. Remote ``http(s)`` URLs only with
    ``allow_remote`` (public addresses only, re-checked after every redirect; ``allowed_domains``
    narrows them further); ``file://`` only under ``local_root``."""

    allow_remote: bool = False
    #: with ``allow_remote``: only these hosts (and their subdomains); empty = any public host
    allowed_domains: tuple[str, ...] = ()
    #: ``file://`` URLs are read only below this folder (symlinks resolved, ``..`` refused)
    local_root: Path | None = None
    #: one image's encoded size
    max_image_bytes: int = 10 * MiB
    #: one image's width x height, read from its header before any pixel is decoded
    max_image_pixels: int = 4096 * 4096
    #: one remote fetch, connect to last byte
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3


@dataclass(frozen=True)
class ServeSettings:
    """How ``graft serve`` runs: network, auth, limits, batching, logging."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: the model id clients send and ``/v1/models`` lists (default: the model folder's name)
    served_model_name: str | None = None
    #: required as ``Authorization: Bearer KEY`` on every route when set
    api_key: str | None = None
    #: allow a non-loopback host without an API key
    insecure_no_auth: bool = False
    #: origins allowed by CORS; empty = CORS off
    cors_origins: tuple[str, ...] = ()
    media: MediaPolicy = field(default_factory=MediaPolicy)
    #: request body limit (413 above it)
    max_body_bytes: int = 32 * MiB
    max_images_per_request: int = 8
    #: the longest answer a request may ask for, and the default when it asks none
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    #: rows decoded together, and how long the worker waits to fill a batch
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    #: requests waiting for the worker; more get 503 with Retry-After
    max_queue: int = 64
    #: on SIGTERM: how long in-flight requests may take to finish
    grace_period_s: float = 30.0
    #: vision features kept by image hash (every chat turn resends all images)
    feature_cache_size: int = 256
    #: log prompts and images (off: only sizes and timings are logged)
    log_prompts: bool = False
    device: str | None = None
    dtype: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_images_per_request", "max_tokens_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must lie in 1..max_tokens_limit")
