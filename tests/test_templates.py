"""Templates against LLaVA's reference strings, label masks token by token, and loud mismatches."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from graft.config import IGNORE_INDEX
from graft.data import LlavaDataset
from graft.processing import GraftProcessor, TokenizationMismatchError
from graft.templates import VICUNA_SYSTEM, Message

from tiny import bytelevel_tokenizer, random_image, tiny_image_processor, tiny_tokenizer

torch.set_num_threads(1)

SEQ = 3  # soft tokens per image in these tests
CHATML = ["<|im_start|>", "<|im_end|>"]
Q1, A1 = "<image>\nIs there a red circle?", "Yes. The image shows a red circle."
Q2, A2 = "How many objects are there?", "There are 3 objects."
SINGLE = [Message("user", Q1), Message("assistant", A1)]
MULTI = SINGLE + [Message("user", Q2), Message("assistant", A2)]

# reference renderings (DESIGN.md, "Reference facts: LLaVA templates") and the exact text each
# template supervises: the answer plus its end-of-turn marker
REFERENCE = {
    ("vicuna_v1", 1): (f"{VICUNA_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>", [f" {A1}</s>"]),
    ("vicuna_v1", 2): (
        f"{VICUNA_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
        [f" {A1}</s>", f" {A2}</s>"],
    ),
    ("llama_2", 1): (f"[INST] <<SYS>>\n{VICUNA_SYSTEM}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s>", [f" {A1} </s>"]),
    ("llama_2", 2): (
        f"[INST] <<SYS>>\n{VICUNA_SYSTEM}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s>"
        f"<s>[INST] {Q2} [/INST] {A2} </s>",
        [f" {A1} </s>", f" {A2} </s>"],
    ),
    ("chatml", 1): (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n",
        [f"{A1}<|im_end|>"],
    ),
    ("chatml", 2): (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n",
        [f"{A1}<|im_end|>", f"{A2}<|im_end|>"],
    ),
    # plain keeps only the user's image markers: image, caption, newline
    ("plain", 1): (f"<image>{A1}\n", [f"{A1}\n"]),
    ("plain", 2): (f"<image>{A1}\n{A2}\n", [f"{A1}\n", f"{A2}\n"]),
}


def _tiny_processor(template: str, tokenizer=None) -> GraftProcessor:
    if tokenizer is None:
        tokenizer = tiny_tokenizer(extra_special=CHATML if template == "chatml" else None)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return GraftProcessor(tokenizer, tiny_image_processor(), SEQ, template=template)


def _expected(processor: GraftProcessor, text: str, supervised: list[str]) -> tuple[list[int], list[int]]:
    """ids and labels worked out from the reference string alone: a token is supervised iff it
    lies inside one of the supervised pieces; each image token becomes SEQ unsupervised copies."""
    spans, pos = [], 0
    for piece in supervised:
        start = text.index(piece, pos)
        spans.append((start, start + len(piece)))
        pos = start + len(piece)
    tok = processor.tokenizer
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = [], []
    if processor.template.add_bos:
        ids, labels = [tok.bos_token_id], [IGNORE_INDEX]
    for token, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        sup = any(a <= s and e <= b for a, b in spans)
        copies = SEQ if token == processor.image_token_id else 1
        ids += [token] * copies
        labels += [token if sup else IGNORE_INDEX] * copies
    return ids, labels


@pytest.mark.parametrize("turns", [1, 2])
@pytest.mark.parametrize("template", ["plain", "vicuna_v1", "llama_2", "chatml"])
def test_template_matches_reference_and_masks_only_answers(template, turns):
    processor = _tiny_processor(template)
    messages = SINGLE if turns == 1 else MULTI
    text, supervised = REFERENCE[(template, turns)]
    assert processor.template.render(messages).text == text

    sample = processor.encode(messages, [random_image()], where="t")
    ids, labels = _expected(processor, text, supervised)
    assert sample.input_ids == ids
    assert sample.labels == labels
    # the supervised tokens read back as exactly the answers and their end-of-turn markers
    tok = processor.tokenizer
    assert tok.decode([t for t in sample.labels if t != IGNORE_INDEX]) == "".join(supervised)
    # image tokens: one block of SEQ, never supervised
    image_positions = [i for i, t in enumerate(sample.input_ids) if t == processor.image_token_id]
    assert len(image_positions) == SEQ
    assert all(sample.labels[i] == IGNORE_INDEX for i in image_positions)


def test_end_of_turn_token_is_supervised():
    processor = _tiny_processor("vicuna_v1")
    sample = processor.encode(MULTI, [random_image()], where="t")
    eos = processor.tokenizer.eos_token_id
    assert [t for t in sample.labels if t == eos] == [eos, eos]
    assert sample.input_ids[-1] == eos and sample.labels[-1] == eos


def _wordlevel_without_eos_special() -> PreTrainedTokenizerFast:
    """Whitespace words, '</s>' unknown as a special token: 'Yes</s>USER:' is one word."""
    words = ["<unk>", "<eos>", "<image>", "USER:", "ASSISTANT:", "Yes.", "Yes</s>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def test_llama2_template_with_gpt2_like_tokenizer_is_a_loud_mismatch():
    tokenizer = bytelevel_tokenizer("</s><s>[INST] Yes </s><s> <html><body>", repeat=50)
    assert "><" in tokenizer.get_vocab()
    processor = _tiny_processor("llama_2", tokenizer)
    with pytest.raises(TokenizationMismatchError, match="record 7.*straddles"):
        processor.encode(MULTI, [random_image()], where="record 7")


def test_vicuna_template_with_wordlevel_tokenizer_is_a_loud_mismatch():
    processor = _tiny_processor("vicuna_v1", _wordlevel_without_eos_special())
    with pytest.raises(TokenizationMismatchError, match="straddles"):
        processor.encode(MULTI, [random_image()], where="t")
    # a single turn ends at the end of the text: nothing straddles, nothing is zeroed
    sample = processor.encode(SINGLE, [random_image()], where="t")
    assert any(t != IGNORE_INDEX for t in sample.labels)


def _llava(messages: list[Message]) -> list[dict]:
    return [{"from": "human" if m.role == "user" else "gpt", "value": m.content} for m in messages]


def test_mismatch_is_found_when_the_dataset_is_built(tmp_path, caplog):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes"}]},
        {"id": "b", "image": "x.png", "conversations": _llava(MULTI)},
    ]
    (tmp_path / "x.png").write_bytes(b"not read when the dataset is built")
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    processor = _tiny_processor(
        "llama_2", bytelevel_tokenizer("</s><s>[INST] Yes </s><s> <html><body>", repeat=50)
    )
    with pytest.raises(TokenizationMismatchError, match=r"data\.json\[1\] \(id 'b'\)"):
        LlavaDataset(path, tmp_path, processor)
    dataset = LlavaDataset(path, tmp_path, processor, skip_bad=True)
    assert dataset.skipped == {"tokenization_mismatch": 1}
    assert [r.id for r in dataset.records] == ["a"]
    assert "skipped 1 bad samples: {'tokenization_mismatch': 1}" in caplog.text
