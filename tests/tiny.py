"""Tiny backbones built from configs, for tests: seconds to build, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from graft.backbones import compose
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER: Is there a red circle? ASSISTANT: Yes. No. The image shows a blue square and a green triangle.",
    "Answer the question using a single word or phrase. Answer with the option's letter. A B C D",
    "How many objects are there? There are 3 objects on the left and right, above and below.",
]
IMAGE_SIZE = 32

#: ``graft demo``'s smoke settings: a tiny world and two steps of every stage (seconds, not minutes)
SMOKE_DEMO = [
    *"--images 60 --llm tiny --vision train --vision-steps 2 --llm-steps 2 --bench-limit 4".split(),
    *"--ground-steps 2 --align-steps 2 --stage1-steps 2 --snap-steps 2 --perceive-steps 2".split(),
]


def tiny_tokenizer(extra_special: list[str] | None = None) -> PreTrainedTokenizerFast:
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=extra_special or [],
        model_max_length=512,
    )


def bytelevel_tokenizer(corpus: str, repeat: int = 20) -> PreTrainedTokenizerFast:
    """GPT-2-like: byte-level BPE (300 tokens, trained on ``corpus``) whose end of text is
    <|endoftext|>, so Llama's '</s>' and '<s>' are plain text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([corpus] * repeat, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )


def tiny_vision(seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    return CLIPVisionModel(cfg).eval()


def tiny_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def tiny_llm(vocab_size: int, seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_model_and_processor(
    connector: dict | str = "mlp2x_gelu", template: str = "vicuna_v1", seed: int = 0
) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    tokenizer = tiny_tokenizer()
    model = compose(tiny_vision(seed), tiny_llm(len(tokenizer) + 1, seed), tokenizer, connector=connector)
    torch.manual_seed(seed)
    model.connector.apply(model._init_weights)
    processor = GraftProcessor(
        tokenizer, tiny_image_processor(), model.config.image_seq_length, template=template
    )
    return model.eval(), processor


def save_tiny_backbones(directory: Path) -> tuple[Path, Path]:
    """Write a tiny vision tower (+ image processor) and LLM (+ tokenizer) like real checkpoints."""
    vision_dir, llm_dir = Path(directory) / "vision", Path(directory) / "llm"
    tiny_vision().save_pretrained(vision_dir)
    tiny_image_processor().save_pretrained(vision_dir)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(llm_dir)
    tiny_llm(len(tokenizer)).save_pretrained(llm_dir)
    return vision_dir, llm_dir


def random_image(seed: int = 0, size: int = IMAGE_SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def tiny_world(root: Path, n_images: int = 6) -> dict[str, str]:
    """Tiny backbones + a LLaVA JSON with a few random images, one two-image record and one text-only."""
    root.mkdir(parents=True, exist_ok=True)
    vision, llm = save_tiny_backbones(root / "backbones")
    (root / "images").mkdir(exist_ok=True)
    for i in range(n_images):
        random_image(i).save(root / "images" / f"{i}.png")
    answers = ["Yes", "No", "There are 3 objects.", "A blue square and a green triangle.", "No. Yes."]
    records = [
        {
            "id": f"s{i}",
            "image": f"images/{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nIs there a red circle?"},
                {"from": "gpt", "value": answers[i % len(answers)]},
            ],
        }
        for i in range(n_images)
    ]
    records.append(
        {
            "id": "pair",
            "images": ["images/0.png", "images/1.png"],
            "conversations": [
                {"from": "human", "value": "<image> and <image>: how many objects are there?"},
                {"from": "gpt", "value": "There are 3 objects on the left and right."},
            ],
        }
    )
    records.append(
        {
            "id": "text",
            "conversations": [
                {"from": "human", "value": "Answer with the option's letter. A B C D"},
                {"from": "gpt", "value": "B"},
            ],
        }
    )
    data = root / "data.json"
    data.write_text(json.dumps(records))
    return {"vision": str(vision), "llm": str(llm), "data": str(data), "root": str(root)}


def tiny_recipe(world: dict[str, str], out: Path, **overrides) -> dict:
    """A raw recipe (mapping) that trains quickly on the tiny world; dotted keys override."""
    raw = {
        "model": {"vision": world["vision"], "llm": world["llm"]},
        "data": {"train": [world["data"]], "image_root": world["root"]},
        "template": "vicuna_v1",
        "connector": {"mode": "full", "lr": 1e-2},
        "llm": {"mode": "full", "lr": 1e-3},
        "optim": {"warmup_ratio": 0.25},
        "batch_size": 2,
        "grad_accum": 2,
        "max_steps": 4,
        "log_every": 1,
        "output_dir": str(out),
        "tensorboard": False,
    }
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def write_image(path: Path, color: tuple[int, int, int] = (10, 200, 10)) -> Path:
    """A small solid image at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """One row per line: dicts as JSON, strings as they are (to write broken lines on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_pope(root: Path, n: int = 6) -> Path:
    """A POPE folder of ``n`` random images and yes/no questions about them (``coco_pope_random``)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        random_image(i).save(root / "images" / f"{i}.png")
        label = "yes" if i % 2 else "no"
        rows.append(
            {"question_id": i + 1, "image": f"{i}.png", "text": f"Is there a circle {i}?", "label": label}
        )
    write_jsonl(root / "coco_pope_random.json", rows)
    return root
