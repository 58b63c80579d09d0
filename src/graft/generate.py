"""Batched generation helpers and a multi-turn chat session.

``generate_replies`` is the one place prompts become answers: evaluation, prediction files and
the chat session all go through it (``generate_answers`` when only the text is wanted); a reply
says whether it was cut at ``max_new_tokens`` before its turn ended. Prompts are left-padded
(``GraftProcessor.prompts``) so every row's last prompt token sits in the same column and the KV
cache is shared by the batch; greedy answers do not depend on the batch they were generated in.
Prompts are batched longest first (``length_order``): a batch pads less, and since a batch decodes
until its longest answer ends, answers of like length ending together save most of the decoding
where long questions ask for long answers (``benchmarks/eval_order.py`` measures both orders).
``GenerationSettings`` holds every knob of it (answer length, batch size, sampling, order), passed as
one object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from graft.processing import GraftProcessor, SampleTooLongError, load_image
from graft.prompts import place_images
from graft.templates import Message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How prompts become answers: the one object every layer passes down to ``generate_answers``
    (the chat session, ``predict_jsonl``, the evaluation runner)."""

    #: longest answer, in tokens
    max_new_tokens: int = 64
    #: prompts per ``model.generate`` call
    batch_size: int = 16
    #: sample (with ``temperature`` and ``top_p``) instead of greedy decoding
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    #: with ``do_sample``: the same seed and batching give the same answers
    seed: int | None = None
    use_cache: bool = True
    #: answer the longest prompts first, in batches of like length (``length_order``); the answers
    #: still come back in the given order
    by_length: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def replace(self, **changes: Any) -> GenerationSettings:
        """A copy with ``changes`` (field names; an unknown one is a TypeError)."""
        return dataclasses.replace(self, **changes)


def length_order(
    processor: GraftProcessor, conversations: list[list[Message]], num_images: list[int]
) -> list[int]:
    """The conversations' indices, longest prompt (in tokens, image blocks included) first; equal
    lengths keep their given order. Deterministic, so processes that share a question file agree
    on it. A conversation whose markers do not match its images raises ``ImageMarkerError`` naming
    its index ("prompt 3"), as ``GraftProcessor.prompts`` does."""
    lengths = [
        len(processor.encode_text(conv, n, True, f"prompt {i}", max_length=1 << 62)[0])
        for i, (conv, n) in enumerate(zip(conversations, num_images, strict=True))
    ]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def answer_stops(model: Any, processor: GraftProcessor) -> tuple[list[int], list[str]]:
    """What ends an answer: token ids (EOS, and the template's turn end or next-turn opening when
    the tokenizer has it as one whole token), and texts that end it at text level (those markers
    when they are ordinary text, a few tokens long)."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    tokenizer = processor.tokenizer
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    whole = tokenizer.get_added_vocab()  # always encoded as one token; decoding may skip them
    texts: list[str] = []
    for marker in (processor.template.stop, processor.template.next_turn):
        if marker in whole:
            ids.add(whole[marker])
        elif marker:
            texts.append(marker)
    return sorted(ids), texts


@dataclass(frozen=True)
class Reply:
    """One generated answer: its text, and whether it reached ``max_new_tokens`` before the end of
    its turn (so its text stops mid-answer and a scorer reads a cut answer)."""

    text: str
    cut: bool = False


def _decode(
    tokens: list[int], eos_ids: list[int], stops: list[str], processor: GraftProcessor, limit: int
) -> Reply:
    """The answer in ``tokens``: up to the first end token, then up to the first stop text; cut
    when neither came within ``limit`` new tokens."""
    ended = False
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            tokens, ended = tokens[:i], True
            break
    text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
    end = min((text.index(stop) for stop in stops if stop in text), default=None)
    if end is not None:
        text, ended = text[:end], True
    return Reply(text.strip(), cut=not ended and len(tokens) >= limit)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global RNG state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while generating; a model borrowed from a training loop goes back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_answers(
    model: Any,
    processor: GraftProcessor,
    conversations: list[list[Message]],
    images: list[list[Image.Image]],
    settings: GenerationSettings | None = None,
    progress: bool = False,
    **changes: Any,
) -> list[str]:
    """The text of ``generate_replies``' answers."""
    return [
        r.text
        for r in generate_replies(model, processor, conversations, images, settings, progress, **changes)
    ]


def generate_replies(
    model: Any,
    processor: GraftProcessor,
    conversations: list[list[Message]],
    images: list[list[Image.Image]],
    settings: GenerationSettings | None = None,
    progress: bool = False,
    **changes: Any,
) -> list[Reply]:
    """One answer per conversation (each ends with a user turn), in order.

    ``settings`` default to ``GenerationSettings()``; ``changes`` are fields of it set for this
    call (``max_new_tokens=12``). Only the new tokens are decoded; an answer ends at EOS, at the
    template's end of turn, or where the model starts a next user turn itself (the template's
    ``next_turn``). With ``do_sample`` and a ``seed`` the answers are reproducible for the same
    batching.
    """
    s = (settings or GenerationSettings()).replace(**changes)
    if len(conversations) != len(images):
        raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")
    eos_ids, stops = answer_stops(model, processor)
    tokenizer = processor.tokenizer
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": s.max_new_tokens,
        "do_sample": s.do_sample,
        "eos_token_id": eos_ids or None,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else next(iter(eos_ids), None),
        "use_cache": s.use_cache,
        # a generated placeholder would be fed back as an image slot with no image behind it
        "suppress_tokens": [processor.image_token_id],
    }
    if s.do_sample:
        gen_kwargs.update(temperature=s.temperature, top_p=s.top_p)
    if stops:
        gen_kwargs.update(stop_strings=stops, tokenizer=tokenizer)

    order = list(range(len(conversations)))
    if s.by_length and len(conversations) > s.batch_size:
        order = length_order(processor, conversations, [len(imgs) for imgs in images])
    answers: dict[int, Reply] = {}
    starts = range(0, len(order), s.batch_size)
    bar = tqdm(starts, desc="generate", unit="batch", disable=not progress or len(starts) <= 1)
    with _eval_mode(model), torch.inference_mode(), _seeded(s.seed, model.device):
        for start in bar:
            rows = order[start : start + s.batch_size]
            batch = processor.prompts([conversations[i] for i in rows], [images[i] for i in rows])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model.generate(**batch, **gen_kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(rows, new_tokens, strict=True):
                answers[i] = _decode(tokens, eos_ids, stops, processor, s.max_new_tokens)
    return [answers[i] for i in range(len(conversations))]


ImageLike = Image.Image | str | os.PathLike


class ChatSession:
    """A multi-turn conversation with a model; every turn sees all earlier turns and images.

    ``ask("What is in <image>?", images=[img])`` puts the image where the marker is; without
    a marker the images go first, one ``<image>\\n`` each (``graft.prompts.place_images``; a
    ``{image#k}`` placeholder names the k-th image of the turn). The whole history is re-encoded
    each turn, so the answer is exactly what ``processor.encode`` of the history would give.
    """

    def __init__(
        self,
        model: Any,
        processor: GraftProcessor,
        system: str | None = None,
        settings: GenerationSettings | None = None,
        **changes: Any,
    ) -> None:
        self.model = model
        self.processor = processor
        self.system = system
        #: every turn's settings (default: answers up to 256 tokens)
        self.settings = (settings or GenerationSettings(max_new_tokens=256)).replace(**changes)
        self.messages: list[Message] = []
        self.images: list[Image.Image] = []

    def reset(self) -> None:
        self.messages, self.images = [], []

    def conversation(self) -> list[Message]:
        """The history as the model sees it (system message first when one was given)."""
        head = [Message("system", self.system)] if self.system is not None else []
        return head + self.messages

    def ask(self, text: str, images: list[ImageLike] | None = None, **changes: Any) -> str:
        """The model's answer to ``text`` (``changes``: generation settings for this turn only)."""
        marker = self.processor.image_token
        loaded = [img if isinstance(img, Image.Image) else load_image(img) for img in images or []]
        where = f"turn {len(self.messages) // 2 + 1}"
        text, order = place_images(text, len(loaded), where, marker, what="the text")
        loaded = [loaded[i] for i in order]
        user = Message("user", text)
        conversation, images = self.conversation() + [user], self.images + loaded
        settings = self._fit(conversation, len(images), self.settings.replace(**changes), where)
        answer = generate_answers(self.model, self.processor, [conversation], [images], settings)[0]
        # a literal marker in an answer would claim an image that does not exist on re-encoding
        said = answer.replace(marker, "")
        # history only grows once the turn succeeded: a failed turn can be retried cleanly
        self.messages += [user, Message("assistant", said)]
        self.images += loaded
        return answer

    def _fit(
        self, conversation: list[Message], num_images: int, settings: GenerationSettings, where: str
    ) -> GenerationSettings:
        """``settings`` with the answer cut to the room the model's context leaves after the
        prompt; a prompt that leaves none is a ``SampleTooLongError`` (past its context a model with
        learned positions fails, one with rotary positions babbles)."""
        ids, _ = self.processor.encode_text(conversation, num_images, True, where, max_length=1 << 62)
        context = context_length(self.model, self.processor)
        if len(ids) >= context:
            what = "start a new conversation" if self.messages else "shorten the text"
            raise SampleTooLongError(
                f"{where}: the conversation is {len(ids)} tokens, the model reads at most {context}; {what}"
            )
        return settings.replace(max_new_tokens=min(settings.max_new_tokens, context - len(ids)))


def context_length(model: Any, processor: GraftProcessor) -> int:
    """The most tokens a prompt and its answer may hold: the processor's ``max_length`` and the
    LLM's position limit, whichever is smaller."""
    text_config = getattr(model.config, "text_config", None)
    positions = getattr(text_config, "max_position_embeddings", None)
    return min(x for x in (processor.max_length, positions, 1 << 62) if x)
