"""Conversation templates: render messages to text plus the character spans the model learns.

Only assistant turns (and their end-of-turn marker) are supervised. ``render`` returns the
spans as character offsets into the rendered text; ``processing`` maps them onto tokens with
the tokenizer's offset mapping, and a token that straddles a span boundary is an error, so a
"tokenization mismatch" can never silently zero a sample's loss.

Each template also carries the equivalent Jinja ``chat_template`` for exported checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
#: SmolLM2-Instruct's default system prompt (its chat template adds it when no system turn is given)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass
class Rendered:
    text: str
    #: [start, end) character spans that are supervised
    supervised: list[tuple[int, int]] = field(default_factory=list)


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[tuple[int, int]] = []

    def add(self, text: str, supervised: bool = False) -> None:
        if supervised and text:
            self.spans.append((self.length, self.length + len(text)))
        self.parts.append(text)
        self.length += len(text)

    def result(self) -> Rendered:
        return Rendered("".join(self.parts), self.spans)


@dataclass(frozen=True)
class Template:
    name: str
    system: str = ""
    #: prepend the tokenizer's BOS token when encoding
    add_bos: bool = True
    #: the end of an assistant turn: generation stops at this string as well as at EOS
    stop: str | None = None
    #: the text that opens the next user turn: an answer that runs on into one (a model that
    #: missed its end of turn) is cut there
    next_turn: str | None = None
    chat_template: str = ""

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        raise NotImplementedError


def _split_system(messages: list[Message], default: str) -> tuple[str, list[Message]]:
    if messages and messages[0].role == "system":
        return messages[0].content, messages[1:]
    return default, messages


def _check_alternation(messages: list[Message], add_generation_prompt: bool) -> None:
    if not messages:
        raise ValueError("empty conversation")
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ValueError(f"turn {i}: expected a {expected} turn, got {m.role!r}")
    if add_generation_prompt and messages[-1].role != "user":
        raise ValueError("a generation prompt must end with a user turn")


class PlainTemplate(Template):
    """LLaVA's pre-training format: the images, then the caption and a newline. The user's words
    are dropped (only their image markers stay)."""

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        _, messages = _split_system(messages, "")
        _check_alternation(messages, add_generation_prompt)
        b = _Builder()
        for m in messages:
            if m.role == "user":
                b.add("<image>" * m.content.count("<image>"))
            else:
                b.add(m.content + "\n", supervised=True)
        return b.result()


class VicunaTemplate(Template):
    """``{system} USER: {q} ASSISTANT: {a}</s>USER: ...`` (LLaVA's conv_vicuna_v1)."""

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        system, messages = _split_system(messages, self.system)
        _check_alternation(messages, add_generation_prompt)
        b = _Builder()
        b.add(system + " ")
        for m in messages:
            if m.role == "user":
                b.add(f"USER: {m.content} ASSISTANT:")
            else:
                b.add(f" {m.content}</s>", supervised=True)
        return b.result()


class Llama2Template(Template):
    """``[INST] <<SYS>>\\n{sys}\\n<</SYS>>\\n\\n{q} [/INST] {a} </s><s>[INST] {q2} [/INST] ...``"""

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        system, messages = _split_system(messages, self.system)
        _check_alternation(messages, add_generation_prompt)
        b = _Builder()
        for i, m in enumerate(messages):
            if m.role == "user":
                if i == 0:
                    prefix = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
                    b.add(f"[INST] {prefix}{m.content} [/INST]")
                else:
                    b.add(f"<s>[INST] {m.content} [/INST]")
            else:
                b.add(f" {m.content} </s>", supervised=True)
        return b.result()


class ChatMLTemplate(Template):
    """``<|im_start|>role\\n{content}<|im_end|>\\n`` per turn (Qwen, SmolLM), as their Jinja
    templates render it: a system turn whenever the conversation gives one (even empty), else the
    default one; the assistant header only before an assistant turn or as the generation prompt."""

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        given = bool(messages) and messages[0].role == "system"
        system, messages = _split_system(messages, self.system)
        _check_alternation(messages, add_generation_prompt)
        b = _Builder()
        if system or given:
            b.add(f"<|im_start|>system\n{system}<|im_end|>\n")
        for m in messages:
            if m.role == "user":
                b.add(f"<|im_start|>user\n{m.content}<|im_end|>\n")
            else:
                b.add("<|im_start|>assistant\n")
                b.add(f"{m.content}<|im_end|>", supervised=True)
                b.add("\n")
        if add_generation_prompt:
            b.add("<|im_start|>assistant\n")
        return b.result()


#: a message's content as graft writes it: a string as it is; typed parts (a processor's
#: ``{"type": "image"}`` / ``{"type": "text"}``) as one ``<image>\n`` per image, then the text
_CONTENT_JINJA = (
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
)

_VICUNA_JINJA = (
    "{% set ns = namespace(system=" + json.dumps(VICUNA_SYSTEM) + ") %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}"
    "{% endfor %}{{ ns.system + ' ' }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' }}"
    + _CONTENT_JINJA
    + "{{ ' ASSISTANT:' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '</s>' }}{% endif %}{% endfor %}"
)

#: SmolLM2-Instruct's own chat template, rendered the same for string content, and able to take a
#: processor's typed parts (its own concatenates ``message['content']`` as a string)
_SMOLLM2_JINJA = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' }}" + _CONTENT_JINJA + "{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES: dict[str, Template] = {
    "plain": PlainTemplate("plain", add_bos=True),
    "vicuna_v1": VicunaTemplate(
        "vicuna_v1", system=VICUNA_SYSTEM, stop="</s>", next_turn="USER:", chat_template=_VICUNA_JINJA
    ),
    "llama_2": Llama2Template("llama_2", system=VICUNA_SYSTEM, stop="</s>", next_turn="[INST]"),
    "chatml": ChatMLTemplate(
        "chatml",
        system="You are a helpful assistant.",
        add_bos=False,
        stop="<|im_end|>",
        next_turn="<|im_start|>",
    ),
    "smollm2": ChatMLTemplate(
        "smollm2",
        system=SMOLLM2_SYSTEM,
        add_bos=False,
        stop="<|im_end|>",
        next_turn="<|im_start|>",
        chat_template=_SMOLLM2_JINJA,
    ),
}

#: the template of a processor or a compose that names none, and of an import whose chat template
#: matches none of these (LLaVA-1.5's)
DEFAULT_TEMPLATE = "vicuna_v1"
#: for help texts: "plain, vicuna_v1, ..."
TEMPLATE_NAMES = ", ".join(TEMPLATES)


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown template {name!r}; valid templates: {', '.join(sorted(TEMPLATES))}"
        ) from None


def messages_from_llava(conversations: list[dict], where: str = "record") -> list[Message]:
    """LLaVA's ``[{"from": "human"|"gpt"|"system", "value": ...}]`` to messages."""
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
    }
    out = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"{where}: conversations[{i}] needs 'from' and 'value'")
        if turn["from"] not in roles:
            raise ValueError(
                f"{where}: conversations[{i}].from is {turn['from']!r}; expected one of {', '.join(roles)}"
            )
        if not isinstance(turn["value"], str):
            raise ValueError(f"{where}: conversations[{i}].value must be a string")
        _check_unicode(turn["value"], f"{where}: conversations[{i}].value")
        out.append(Message(roles[turn["from"]], turn["value"]))
    return out


def _check_unicode(text: str, what: str) -> None:
    """A JSON escape such as ``"\\ud83d"`` without its pair decodes to a lone surrogate, which no
    tokenizer can encode (it fails with a TypeError that names nothing)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} holds a lone surrogate {text[err.start]!r} at character {err.start}: not valid Unicode"
        ) from None
