"""Stage-2 training throughput: graft vs transformers' ``LlavaForConditionalGeneration``.

Both sides get the same tiny backbones (shapes-world demo sizes: a CLIP-style vision tower of
hidden 128, 4 layers, 64x64 images, patch 8; a Llama of hidden 192, 4 layers, vocab ~1500), the
same weights (the LLaVA side is graft's model converted by ``graft.export.to_llava`` and copied)
and the same batches: 32 samples of ~100 tokens with one image each. One optimizer step = forward,
backward and AdamW on connector + LLM with the vision tower frozen (LLaVA's stage 2).

graft is measured the way its training loop runs it: with the vision tower frozen, the loop caches
the selected vision features (``model.select_vision_features``) and feeds ``vision_features=``
instead of ``pixel_values``; here they are computed once before timing, as that cache would. The
uncached graft number (``pixel_values``, like transformers) is printed too.

    python benchmarks/train_throughput.py --repeats 5 --batch-size 8 --threads 1

The last line is ``ratio=<graft cached samples/s / transformers samples/s>``.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

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
from transformers.utils import logging as hf_logging

from graft.backbones import compose
from graft.export import to_llava
from graft.processing import GraftProcessor
from graft.templates import VICUNA_SYSTEM, Message

IMAGE_SIZE = 64
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center", "left", "right"]


def _sentence(rng: random.Random) -> str:
    size, color, shape = rng.choice(["small", "large"]), rng.choice(COLORS), rng.choice(SHAPES)
    return f"a {size} {color} {shape} at the {rng.choice(PLACES)}"


def build_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    corpus = [VICUNA_SYSTEM] * 50 + [
        f"USER: There is {_sentence(rng)} and {_sentence(rng)}. What is in the image? ASSISTANT: Yes.</s>"
        for _ in range(2000)
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    torch.manual_seed(seed)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=128,
            num_attention_heads=4,
            intermediate_size=512,
            num_hidden_layers=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        )
    )
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=192,
            num_attention_heads=6,
            num_key_value_heads=6,
            intermediate_size=512,
            num_hidden_layers=4,
            vocab_size=len(tokenizer) + 1,  # + the image token compose adds
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model = compose(vision, llm, tokenizer, connector="mlp2x_gelu")
    model.connector.apply(model._init_weights)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = GraftProcessor(tokenizer, image_processor, model.config.image_seq_length, "vicuna_v1")
    return model, processor


def build_batches(processor: GraftProcessor, rng: random.Random, n: int, batch_size: int) -> list[dict]:
    samples = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        question = "<image>\nWhat is in the image?"
        answer = f"There is {_sentence(rng)}."
        samples.append(
            processor.encode(
                [Message("user", question), Message("assistant", answer)],
                [Image.fromarray(pixels)],
                where=f"sample {i}",
            )
        )
    return [processor.collate(samples[i : i + batch_size]) for i in range(0, n, batch_size)]


class Side:
    """One contender: a model, its optimizer, and the inputs it is fed."""

    def __init__(self, name: str, model: torch.nn.Module, vision: torch.nn.Module, batches: list[dict]):
        self.name, self.model, self.batches = name, model, batches
        vision.requires_grad_(False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
        self.seconds, self.samples = 0.0, 0

    def step(self, i: int, timed: bool) -> None:
        batch = self.batches[i]
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.optimizer.step()
        if timed:
            self.seconds += time.perf_counter() - start
            self.samples += len(batch["input_ids"])

    @torch.no_grad()
    def loss(self, batch: dict) -> float:
        return self.model(**batch).loss.item()

    @property
    def throughput(self) -> float:
        return self.samples / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed passes over the data (after one warm-up)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    rng = random.Random(0)

    model, processor = build_model(build_tokenizer(rng))
    batches = build_batches(processor, rng, args.samples, args.batch_size)
    llava = copy.deepcopy(to_llava(model))  # the same function, its own weights
    uncached = copy.deepcopy(model)
    with torch.no_grad():  # what the training loop's feature cache holds for a frozen tower
        model.eval()
        cached_batches = [
            {
                **{k: v for k, v in b.items() if k != "pixel_values"},
                "vision_features": model.select_vision_features(b["pixel_values"]),
            }
            for b in batches
        ]
    sides = [
        Side("graft (cached vision features)", model, model.vision_tower, cached_batches),
        Side("graft (pixel_values)", uncached, uncached.vision_tower, batches),
        Side("transformers LlavaForConditionalGeneration", llava, llava.model.vision_tower, batches),
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / args.samples
    start_diff = abs(sides[0].loss(cached_batches[0]) - sides[2].loss(batches[0]))
    print(
        f"{args.samples} samples, {tokens:.0f} tokens each on average ({model.config.image_seq_length} image "
        f"tokens), batch {args.batch_size}, {args.threads} thread(s), {args.repeats} repeats after 1 warm-up"
    )
    print(f"same function: |loss graft - loss transformers| = {start_diff:.2e} before training")

    steps = 0
    for r in range(args.repeats + 1):  # the first pass is the warm-up
        for i in range(len(batches)):
            # alternate step by step, and who goes first, so load drift hits every side alike
            k = steps % len(sides)
            for side in sides[k:] + sides[:k]:
                side.step(i, timed=r > 0)
            steps += 1

    end_diff = abs(sides[0].loss(cached_batches[0]) - sides[2].loss(batches[0]))
    print(f"after {steps} identical steps: |loss difference| = {end_diff:.2e}")
    for side in sides:
        print(f"{side.name:45s} {side.throughput:8.2f} samples/s")
    print("graft is measured with its vision-feature cache (features computed once before timing)")
    print(f"uncached ratio={sides[1].throughput / sides[2].throughput:.2f}")
    print(f"ratio={sides[0].throughput / sides[2].throughput:.2f}")


if __name__ == "__main__":
    main()
