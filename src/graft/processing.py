"""Images -> pixel tensors; conversations -> token ids and labels with image placeholders.

``GraftProcessor`` bundles the tokenizer, the vision backbone's image processor, the
conversation template and the number of soft tokens per image. Every ``<image>`` marker in the
text becomes ``image_seq_length`` copies of the image token id, so the model's
``masked_scatter`` finds exactly one block per image. Loading a tokenizer or an image processor
(``load_tokenizer``, ``load_image_processor``) lives here too: preprocessing is this module's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.files import write_text_atomic
from graft.prompts import ImageMarkerError, check_marker_count
from graft.templates import DEFAULT_TEMPLATE, Message, Template, get_template

IGNORE_INDEX = -100
PROCESSOR_FILE = "graft_processor.json"
#: subfolder of a model folder holding the Q-Former's own tokenizer (as InstructBLIP's processor does)
INSTRUCTION_TOKENIZER_DIR = "qformer_tokenizer"


class TokenizationMismatchError(ValueError):
    """A token straddles a supervised span: the labels would be wrong, so we refuse."""


class SampleTooLongError(ValueError):
    """A sample does not fit the context; truncating it could cut an image's token block."""


class ImageLoadError(ValueError):
    """An image file is missing or cannot be decoded."""


def load_image_processor(name_or_path: str) -> Any:
    # the PIL backend, explicitly: torchvision may be absent (or not importable) beside torch
    return AutoImageProcessor.from_pretrained(name_or_path, backend="pil")


#: the files a saved tokenizer leaves (one is enough for AutoTokenizer to find it)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


def load_tokenizer(name_or_path: str, config: PretrainedConfig | None = None) -> PreTrainedTokenizerBase:
    """The fast tokenizer of a folder or hub id; a folder without one, or a GGUF file, is a
    ValueError that says what to do. ``config``: the folder's model config, already loaded, so
    that transformers does not read its config.json again (a class there may be remote code)."""
    if str(name_or_path).endswith(".gguf"):
        raise ValueError(
            f"{name_or_path} is a GGUF file: convert it to a checkpoint folder first with "
            "`graft import-gguf FILE.gguf --out DIR` and give DIR"
        )
    if os.path.isdir(name_or_path) and not any(
        os.path.exists(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES
    ):
        raise ValueError(
            f"{name_or_path}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES)}); "
            "save the LLM's tokenizer beside its weights (tokenizer.save_pretrained)"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **({} if config is None else {"config": config}))
    if not tokenizer.is_fast:
        raise ValueError(f"{name_or_path}: graft needs a fast tokenizer (label masks use offset mappings)")
    return tokenizer


#: what decoding a damaged file can raise (PIL's plugins are not uniform), and an image whose
#: header claims more pixels than PIL will decode
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
)


def load_image(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise ImageLoadError(f"image not found: {path}") from None
    except _DECODE_ERRORS as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB. Grey levels deeper than 8 bits (a 16-bit PNG or TIFF) are scaled onto
    0-255 first: PIL's own conversion clips them, turning a 16-bit scan nearly all white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_grey_to_8bit(np.asarray(image), image.mode))
    return image.convert("RGB")


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit levels (``I;16``, or ``I`` above 255) divided by 257; floats in [0, 1] times 255."""
    values = values.astype(np.float64)
    top = values.max(initial=0.0)
    if mode.startswith("I;16") or (mode == "I" and top > 255):
        values = values / 257
    elif mode == "F" and top <= 1.0:
        values = values * 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """LLaVA-1.5's 'pad' aspect mode: centre the image on a square of the mean colour."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    return ImageOps.pad(image, (side, side), color=fill, centering=(0.5, 0.5))


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # [num_images, 3, H, W]
    #: the latest user turn in the Q-Former's own tokenizer (instruction-aware connectors only)
    instruction_ids: list[int] | None = None

    @property
    def num_images(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])


class GraftProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        image_seq_length: int,
        template: str | Template = DEFAULT_TEMPLATE,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        pad_to_square: bool = False,
        max_length: int | None = None,
        instruction_tokenizer: PreTrainedTokenizerBase | None = None,
        instruction_max_length: int = 128,
    ) -> None:
        self.tokenizer = tokenizer
        #: the Q-Former's tokenizer, for connectors that read the instruction (InstructBLIP)
        self.instruction_tokenizer = instruction_tokenizer
        self.instruction_max_length = instruction_max_length
        self.image_processor = image_processor
        self.image_seq_length = image_seq_length
        self.template = get_template(template) if isinstance(template, str) else template
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token!r} token; compose the model first")
        self.pad_to_square = pad_to_square
        self.max_length = max_length or getattr(tokenizer, "model_max_length", None)

    # --- images -------------------------------------------------------------------------------
    def image_fill(self) -> tuple[int, int, int]:
        mean = getattr(self.image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        return tuple(int(255 * m) for m in mean)  # rounded down, as LLaVA does  # type: ignore[return-value]

    def blank_image(self, image: Image.Image) -> Image.Image:
        """A blank image of ``image``'s size in ``image_fill``: what a blind evaluation shows."""
        return Image.new("RGB", image.size, self.image_fill())

    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        if self.pad_to_square:
            images = [pad_to_square(img, self.image_fill()) for img in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    # --- text ---------------------------------------------------------------------------------
    def encode(
        self,
        messages: list[Message],
        images: list[Image.Image] | None = None,
        add_generation_prompt: bool = False,
        where: str = "sample",
    ) -> EncodedSample:
        """Token ids, labels (-100 where unsupervised) and pixel values for one conversation."""
        images = images or []
        input_ids, labels = self.encode_text(messages, len(images), add_generation_prompt, where)
        pixel_values = self.preprocess_images(images) if images else None
        return EncodedSample(input_ids, labels, pixel_values, self.encode_instruction(messages))

    def encode_instruction(self, messages: list[Message]) -> list[int] | None:
        """The latest user turn, image markers removed, in the Q-Former's tokenizer (with its
        special tokens, truncated to ``instruction_max_length``); None without that tokenizer."""
        if self.instruction_tokenizer is None:
            return None
        turns = [m.content for m in messages if m.role == "user"]
        text = " ".join((turns[-1] if turns else "").replace(self.image_token, " ").split())
        return self.instruction_tokenizer(text, truncation=True, max_length=self.instruction_max_length)[
            "input_ids"
        ]

    def encode_text(
        self,
        messages: list[Message],
        num_images: int,
        add_generation_prompt: bool = False,
        where: str = "sample",
        max_length: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """``encode`` without pixels: ids and labels, each image marker expanded to its block.

        Checks that the markers match ``num_images`` and that the sample fits ``max_length``
        (default: the processor's)."""
        markers = sum(m.content.count(self.image_token) for m in messages)
        check_marker_count(
            markers, num_images, where, self.image_token, "the conversation", images_first=False
        )
        rendered = self.template.render(messages, add_generation_prompt=add_generation_prompt)
        enc = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        if ids.count(self.image_token_id) != markers:  # plain drops a system turn's markers
            raise ImageMarkerError(
                f"{where}: the {self.template.name} template keeps {ids.count(self.image_token_id)} of the "
                f"{markers} {self.image_token} marker(s); put them in user turns"
            )
        supervised = self._supervised_tokens(enc["offset_mapping"], rendered.supervised, ids, where)

        input_ids: list[int] = []
        labels: list[int] = []
        if self.template.add_bos and self.tokenizer.bos_token_id is not None:
            input_ids.append(self.tokenizer.bos_token_id)
            labels.append(IGNORE_INDEX)
        for token, sup in zip(ids, supervised, strict=True):
            if token == self.image_token_id:
                if sup:
                    raise ImageMarkerError(f"{where}: {self.image_token} inside an assistant turn")
                input_ids.extend([token] * self.image_seq_length)
                labels.extend([IGNORE_INDEX] * self.image_seq_length)
            else:
                input_ids.append(token)
                labels.append(token if sup else IGNORE_INDEX)
        limit = max_length or self.max_length
        if limit is not None and len(input_ids) > limit:
            raise SampleTooLongError(f"{where}: {len(input_ids)} tokens, longer than max_length={limit}")
        return input_ids, labels

    def _supervised_tokens(
        self,
        offsets: list[tuple[int, int]],
        spans: list[tuple[int, int]],
        ids: list[int],
        where: str,
    ) -> list[bool]:
        flags = [False] * len(offsets)
        for a, b in spans:
            hit = False
            for i, (s, e) in enumerate(offsets):
                if e <= a or s >= b or s == e:
                    continue
                if s < a or e > b:
                    piece = self.tokenizer.decode([ids[i]])
                    raise TokenizationMismatchError(
                        f"{where}: token {piece!r} at characters {s}-{e} straddles the supervised span "
                        f"{a}-{b}; "
                        "the template and tokenizer disagree on turn boundaries"
                    )
                flags[i] = hit = True
            if not hit:
                raise TokenizationMismatchError(f"{where}: the supervised span {a}-{b} holds no token")
        return flags

    # --- batches --------------------------------------------------------------------------------
    def collate(self, samples: list[EncodedSample], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of samples into a batch; images concatenated in order of appearance."""
        return collate_samples(samples, self.tokenizer.pad_token_id, padding_side)

    def prompts(
        self, conversations: list[list[Message]], images: list[list[Image.Image]]
    ) -> dict[str, torch.Tensor]:
        """A left-padded generation batch (each conversation ends with a user turn)."""
        samples = [
            self.encode(msgs, imgs, add_generation_prompt=True, where=f"prompt {i}")
            for i, (msgs, imgs) in enumerate(zip(conversations, images, strict=True))
        ]
        batch = self.collate(samples, padding_side="left")
        batch.pop("labels")
        return batch

    # --- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.template.chat_template and not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = self.template.chat_template
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        settings = {
            "template": self.template.name,
            "image_token": self.image_token,
            "image_seq_length": self.image_seq_length,
            "pad_to_square": self.pad_to_square,
            "max_length": self.max_length,
        }
        if self.instruction_tokenizer is not None:
            self.instruction_tokenizer.save_pretrained(directory / INSTRUCTION_TOKENIZER_DIR)
            settings["instruction_max_length"] = self.instruction_max_length
        write_text_atomic(directory / PROCESSOR_FILE, json.dumps(settings, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> GraftProcessor:
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {directory} a graft model folder?")
        settings = json.loads(path.read_text())
        # tokens per image follow from the model's connector: the folder's config.json says how
        # many (its copy in PROCESSOR_FILE is read only for a folder without a model config)
        tokens = _model_image_seq_length(directory)
        if tokens is not None:
            settings["image_seq_length"] = tokens
        settings.update(overrides)
        instruction_dir = directory / INSTRUCTION_TOKENIZER_DIR
        if "instruction_tokenizer" not in settings and instruction_dir.is_dir():
            settings["instruction_tokenizer"] = load_tokenizer(str(instruction_dir))
        return cls(load_tokenizer(str(directory)), load_image_processor(str(directory)), **settings)


def _model_image_seq_length(directory: Path) -> int | None:
    """Soft tokens per image of the graft model saved in ``directory`` (None: no model config)."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("image_seq_length")


def collate_samples(
    samples: list[EncodedSample], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
        input_ids[i, cols] = torch.tensor(s.input_ids)
        labels[i, cols] = torch.tensor(s.labels)
        attention_mask[i, cols] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    batch.update(_collate_instructions(samples))
    return batch


def _collate_instructions(samples: list[EncodedSample]) -> dict[str, torch.Tensor]:
    """``instruction_ids`` / ``instruction_mask``, right-padded (pad id 0: masked out anyway)."""
    rows = [s.instruction_ids for s in samples]
    if all(r is None for r in rows):
        return {}
    if any(r is None for r in rows):
        raise ValueError("a batch mixes samples with and without instruction ids")
    length = max(len(r) for r in rows)  # type: ignore[arg-type]
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)  # type: ignore[arg-type]
        mask[i, : len(r)] = 1  # type: ignore[arg-type]
    return {"instruction_ids": ids, "instruction_mask": mask}
