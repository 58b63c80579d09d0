"""A small byte-level BPE tokenizer trained on the world's text, saved like a hub tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .artifacts import building, is_finished

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def train_tokenizer(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    vocab_size: int = 1536,
    model_max_length: int = 512,
    max_chars: int = 8_000_000,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the LLM corpus and captions. Adds <s> at the start like Llama; no <image>
    (graft adds its own image token). Offsets are exact: text[start:end] is the token's text."""
    if is_finished(out_dir):
        return PreTrainedTokenizerFast.from_pretrained(out_dir)
    world = Path(world_dir)
    # A prefix of the (shuffled) corpus already holds every pattern; BPE on all of it only costs time.
    text = (world / "text" / "llm_corpus.txt").read_text(encoding="utf-8")[:max_chars]
    text += "\n" + (world / "text" / "captions.jsonl").read_text(encoding="utf-8")[: max_chars // 8]

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            # trim_offsets=False keeps a token's leading space inside its span: spans tile the text.
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
    )
    with building(out_dir, {"kind": "tokenizer", "vocab_size": len(fast)}) as tmp:
        fast.save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(out_dir)
