"""OpenAI's chat-completions request, checked, and the response and chunk objects it is answered with.

What OpenAI defines is taken as it defines it: sampling, stop strings, several choices (``n``),
log-probabilities, penalties and ``logit_bias``. What graft cannot honour (tools, structured
output ...) is a 400 naming the parameter, never silently ignored; at its neutral value
(``tools: []``, ``response_format: {type: text}``) it is accepted, since clients send them.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from graft.serve.decoding import Sampling
from graft.serve.errors import APIError, invalid
from graft.serve.settings import ServeSettings
from graft.templates import Message

#: parameters graft does not implement, with the values that mean "not used"
NEUTRAL = {
    "tools": ([], None),
    "tool_choice": ("none", None),
    "functions": ([], None),
    "function_call": ("none", None),
    "parallel_tool_calls": (None, False),
    "response_format": ({"type": "text"}, None),
}
SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
}
#: OpenAI's bounds
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
#: a seed is a 64-bit integer (what a generator takes), for every choice's seed + i
SEED_RANGE = (-(2**63), 2**63 - 1)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class ImagePart:
    url: str
    #: the request field it came from, for error messages
    param: str


@dataclass
class ChatRequest:
    messages: list[Message]
    #: in order of appearance; a marker stands where each was in ``messages``
    images: list[ImagePart]
    #: None: the server's default, bounded by the context left after the prompt
    max_tokens: int | None
    sampling: Sampling
    stream: bool
    include_usage: bool
    #: choices asked (``n``); choice i samples with ``seed + i`` when a seed is given
    n: int = 1

    def samplings(self, max_tokens: int) -> list[Sampling]:
        """Each choice's decoding, all with ``max_tokens``."""
        seed = self.sampling.seed
        return [
            replace(self.sampling, max_tokens=max_tokens, seed=None if seed is None else seed + i)
            for i in range(self.n)
        ]


def _number(body: dict, key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(f"{key} must be a number in [{low}, {high}], got {value!r}", key)
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise invalid(f"{key} must be an integer, got {value!r}", key)
    return value


def _logit_bias(value: Any, vocab_size: int) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise invalid("logit_bias must be an object mapping token ids to biases", "logit_bias")
    out = []
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 12 and int(key) < vocab_size):
            raise invalid(f"logit_bias: {key[:20]!r} is not a token id (0..{vocab_size - 1})", "logit_bias")
        if (
            isinstance(bias, bool)
            or not isinstance(bias, (int, float))
            or not math.isfinite(bias)  # NaN passes every comparison below
            or abs(bias) > MAX_LOGIT_BIAS
        ):
            bound = f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]"
            raise invalid(f"logit_bias[{key!r}] must be a number in {bound}, got {bias!r}", "logit_bias")
        out.append((int(key), float(bias)))
    return tuple(out)


def _logprobs(body: dict) -> int | None:
    """``top_logprobs`` when log-probabilities are asked (0 without it), else None."""
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise invalid("logprobs must be a boolean", "logprobs")
    top = _integer(body, "top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise invalid(f"top_logprobs must lie in 0..{MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
    if top and not asked:
        raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if asked else None


def _utf8(text: str, param: str) -> None:
    """Text JSON allowed but no tokenizer takes: a lone surrogate (``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{param} holds a lone UTF-16 surrogate, which is not text", param) from None


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop must be a non-empty string or a list of at most 4 of them", "stop")
    for stop in stops:
        _utf8(stop, "stop")
    return tuple(stops)


def _content(message: dict, at: str, role: str, image_token: str | None, images: list[ImagePart]) -> str:
    """A message's text, with ``image_token`` where each image part stands."""
    content = message.get("content")
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content:
        parts = content
    else:
        raise invalid(f"{at}.content must be a string or a non-empty list of content parts", f"{at}.content")
    pieces = []
    for j, part in enumerate(parts):
        where = f"{at}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            _utf8(part["text"], f"{where}.text")
            if image_token and image_token in part["text"]:
                raise invalid(
                    f"{where}.text contains {image_token!r}, the model's image marker: send images as "
                    "image_url parts",
                    f"{where}.text",
                    "image_token_in_text",
                )
            pieces.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise invalid(f"{where}.image_url.url must be a string", f"{where}.image_url.url")
            if role != "user":
                raise invalid(f"{where}: images are accepted in user messages only", where)
            if image_token is None:
                raise invalid("this model is text-only: it takes no images", where, "images_not_supported")
            images.append(ImagePart(url, f"{where}.image_url.url"))
            pieces.append(image_token)
        else:
            raise invalid(f"{where}: content parts are {{type: text}} or {{type: image_url}}", where)
    return "".join(pieces)


def parse_chat_request(
    body: Any, model_name: str, image_token: str | None, settings: ServeSettings, vocab_size: int
) -> ChatRequest:
    """The checked request, or an ``APIError`` naming the offending field (``vocab_size``
    bounds ``logit_bias``'s token ids)."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", None, "invalid_json")
    for key, value in body.items():
        if key in SUPPORTED:
            continue
        if key in NEUTRAL and value in NEUTRAL[key]:
            continue
        raise invalid(f"parameter {key!r} is not supported by this server", key, "unsupported_parameter")
    if body.get("model") != model_name:
        raise APIError(
            404,
            f"model {body.get('model')!r} does not exist; this server serves {model_name!r}",
            "model_not_found",
            "model",
        )
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages must be a non-empty list", "messages")
    messages: list[Message] = []
    images: list[ImagePart] = []
    for i, message in enumerate(raw):
        at = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"{at}.role must be one of {', '.join(ROLES)}", f"{at}.role")
        extra = set(message) - {"role", "content", "name"}
        if not isinstance(message.get("name", ""), str):
            raise invalid(f"{at}.name must be a string", f"{at}.name")
        if extra:
            raise invalid(
                f"{at}: field {sorted(extra)[0]!r} is not supported",
                f"{at}.{sorted(extra)[0]}",
                "unsupported_parameter",
            )
        role = ROLES[message["role"]]
        if role == "system" and i > 0:
            raise invalid(f"{at}: a system message may only come first", f"{at}.role")
        messages.append(Message(role, _content(message, at, role, image_token, images)))  # type: ignore[arg-type]
    if messages[-1].role != "user":
        raise invalid("the last message must be a user message", f"messages[{len(raw) - 1}].role")
    if len(images) > settings.max_images_per_request:
        raise invalid(
            f"{len(images)} images in one request; this server takes at most "
            f"{settings.max_images_per_request}",
            "messages",
            "too_many_images",
        )

    max_tokens = _integer(body, "max_completion_tokens")
    max_tokens = max_tokens if max_tokens is not None else _integer(body, "max_tokens")
    if max_tokens is not None and not 1 <= max_tokens <= settings.max_tokens_limit:
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise invalid(f"{key} must lie in 1..{settings.max_tokens_limit}, got {max_tokens}", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (
        not stream or not isinstance(options, dict) or set(options) - {"include_usage"}
    ):
        raise invalid("stream_options takes {include_usage: bool}, with stream: true", "stream_options")
    if not isinstance((options or {}).get("include_usage", False), bool):
        raise invalid("stream_options.include_usage must be a boolean", "stream_options.include_usage")
    sampling = Sampling(
        max_tokens=max_tokens or settings.default_max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 1e-9, 1.0, 1.0),
        seed=_integer(body, "seed"),
        stop=_stop(body.get("stop")),
        presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
        logit_bias=_logit_bias(body.get("logit_bias"), vocab_size),
        top_logprobs=_logprobs(body),
    )
    n = _integer(body, "n")
    if n is not None and not 1 <= n <= settings.max_batch_size:
        raise invalid(f"n must lie in 1..{settings.max_batch_size} (the server's batch size), got {n}", "n")
    low, high = SEED_RANGE
    if sampling.seed is not None and not low <= sampling.seed <= high - ((n or 1) - 1):
        raise invalid(f"seed must be a 64-bit integer ({low}..{high}; seed + n - 1 too)", "seed")
    include_usage = bool((options or {}).get("include_usage", False))
    return ChatRequest(messages, images, max_tokens, sampling, stream, include_usage, n or 1)


@dataclass
class Answer:
    """One choice's whole answer."""

    text: str = ""
    finish_reason: str = "stop"
    #: None: log-probabilities were not asked
    logprobs: list[dict[str, Any]] | None = None


def _logprobs_field(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def choices_usage(usages: list[dict[str, int]]) -> dict[str, int]:
    """One request's usage over its choices: the prompt once, every choice's completion."""
    prompt = usages[0]["prompt_tokens"] if usages else 0
    completion = sum(u["completion_tokens"] for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Completion:
    """The response objects of one request: a full response or its stream's chunks, one ``id``."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, choices: list[Answer], usage: dict[str, int]) -> dict[str, Any]:
        out = [
            {
                "index": i,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
                "logprobs": _logprobs_field(answer.logprobs),
            }
            for i, answer in enumerate(choices)
        ]
        return {**self._head("chat.completion"), "choices": out, "usage": usage}

    def chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        index: int = 0,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": _logprobs_field(logprobs),
        }
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}
