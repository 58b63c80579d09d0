"""The text-only answerer of the expert pipeline, and the prompt it reads.

``with_descriptions`` puts each image's description where its marker stood, in order
(``Image k: <description>``). An answerer turns such prompts into answers: ``LocalAnswerer``, a
causal LM folder rendered with its tokenizer's chat template, or ``EndpointAnswerer``, any
OpenAI-compatible chat-completions endpoint, checked with ``/v1/models`` before any work so a
server that is down is a clear error naming its URL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: how a description stands in for its image; ``{k}`` counts from 1
IMAGE_TEXT = "Image {k}: {description}"


class EndpointError(RuntimeError):
    """The answering endpoint cannot be reached or refuses: nothing more is asked of it.
    ``answered``: the answers of the batch it gave before failing (kept by the caller)."""

    def __init__(self, message: str, answered: list[Answer] | None = None) -> None:
        super().__init__(message)
        self.answered = answered or []


#: the prompt names the image itself just before its marker ("Image A: <image>", DEMON's way)
_LABELLED = re.compile(r"\bimage\s*\w{0,3}\s*:\s*$", re.IGNORECASE)


def with_descriptions(
    prompt: str, marker: str, descriptions: Sequence[str], template: str = IMAGE_TEXT
) -> str:
    """``prompt`` with its k-th ``marker`` replaced by the k-th description (in ``template``), or
    by the description alone where the prompt labels the image itself ("Image A: <image>"); the
    prompt must hold exactly one marker per description."""
    parts = prompt.split(marker)
    if len(parts) - 1 != len(descriptions):
        raise ValueError(
            f"the prompt has {len(parts) - 1} image markers but {len(descriptions)} descriptions"
        )
    out = parts[0]
    for k, (text, rest) in enumerate(zip(descriptions, parts[1:], strict=True), start=1):
        labelled = _LABELLED.search(out[-40:]) is not None
        out += (text.strip() if labelled else template.format(k=k, description=text.strip())) + rest
    return out


@dataclass
class Answer:
    text: str
    seconds: float
    prompt_tokens: int
    answer_tokens: int


class Answerer(Protocol):
    #: names the answerer in results ("local:<dir>:<hash>", "endpoint:<url>#<model>")
    id: str

    def answer(self, prompts: Sequence[str], max_new_tokens: int) -> list[Answer]: ...


class LocalAnswerer:
    """A causal LM folder (its tokenizer's chat template), greedy, batched with left padding."""

    def __init__(self, model_dir: Path, device: str | None = None, bf16: bool = False) -> None:
        import torch
        from accelerate import PartialState
        from transformers import AutoModelForCausalLM

        from graft.precision import use_bf16
        from graft.processing import load_tokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
        self.tokenizer = load_tokenizer(str(model_dir))
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{model_dir}: the tokenizer has no chat_template; the answerer needs one")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        target = torch.device(device) if device else PartialState().device
        dtype = torch.bfloat16 if use_bf16(bf16, target) else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(target).eval()
        ids: set[int] = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            ids.update([value] if isinstance(value, int) else value or [])
        self.eos = sorted(ids)
        from graft.eval.runner import weights_fingerprint

        self.id = f"local:{model_dir.resolve().name}:{weights_fingerprint(self.model)}"

    def answer(self, prompts: Sequence[str], max_new_tokens: int) -> list[Answer]:
        import torch

        if not prompts:
            return []
        began = time.perf_counter()
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: enc[k].to(self.model.device) for k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.eos or None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        ends = [next((i for i, t in enumerate(row) if t in self.eos), len(row)) for row in new]
        each = (time.perf_counter() - began) / len(prompts)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [
            Answer(self.tokenizer.decode(row[:end], skip_special_tokens=True).strip(), each, int(n), end)
            for row, end, n in zip(new, ends, lengths, strict=True)
        ]


class EndpointAnswerer:
    """An OpenAI-compatible chat endpoint; ``/v1/models`` is asked first (and names the model
    when none is given), so a server that is down fails before any work."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 1,
    ) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "none", max_retries=max_retries, timeout=timeout
        )
        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.APIError as err:
            raise EndpointError(
                f"the answering endpoint {self.base_url} is not answering ({type(err).__name__}: {err}); "
                "start it, or check --endpoint"
            ) from None
        if model is None:
            if not served:
                raise EndpointError(f"{self.base_url}/models lists no model; give the endpoint's model name")
            model = served[0]
        self.model = model
        self.id = f"endpoint:{self.base_url}#{model}"

    def answer(self, prompts: Sequence[str], max_new_tokens: int) -> list[Answer]:
        out = []
        for p in prompts:
            began = time.perf_counter()
            try:
                reply = self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": p}],
                    max_tokens=max_new_tokens,
                    temperature=0,
                )
            except self._openai.APIError as err:
                raise EndpointError(
                    f"the answering endpoint {self.base_url} failed ({type(err).__name__}: {err}); "
                    "the answers and descriptions so far are kept: rerun to resume",
                    out,
                ) from None
            usage: Any = reply.usage
            text = reply.choices[0].message.content or ""
            out.append(
                Answer(
                    text.strip(),
                    time.perf_counter() - began,
                    getattr(usage, "prompt_tokens", 0) or 0,
                    getattr(usage, "completion_tokens", 0) or 0,
                )
            )
        return out
