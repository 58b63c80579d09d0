"""The smollm2 template encodes exactly the token ids SmolLM2's own chat template gives, supervises
only the assistant turns, and ships a chat template an exported LLaVA processor can use."""

import pytest
import torch

from graft.backbones import compose
from graft.config import IGNORE_INDEX
from graft.export.processor import llava_processor
from graft.processing import GraftProcessor, load_tokenizer
from graft.templates import Message, get_template

from tiny import tiny_image_processor, tiny_llm, tiny_tokenizer, tiny_vision

torch.set_num_threads(1)

#: SmolLM2-135M-Instruct's own chat template, as its tokenizer (and GGUF file) carries it
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
CHATML = ["<|im_start|>", "<|im_end|>"]
Q1, A1 = "Is there a red circle?", "Yes. The image shows a red circle."
Q2, A2 = "How many objects are there?", "There are 3 objects."
Q3 = "Answer with the option's letter. A B C D"
CONVERSATIONS = {
    "one turn": [Message("user", Q1), Message("assistant", A1)],
    "two turns": [
        Message("user", Q1),
        Message("assistant", A1),
        Message("user", Q2),
        Message("assistant", A2),
    ],
    "open": [Message("user", Q1), Message("assistant", A1), Message("user", Q3)],
    "system": [Message("system", "Be brief."), Message("user", Q2), Message("assistant", A2)],
    "system, open": [
        Message("system", "Be brief."),
        Message("user", Q1),
        Message("assistant", A1),
        Message("user", Q2),
    ],
    "empty system": [Message("system", ""), Message("user", Q1), Message("assistant", A1)],
}
CASES = [
    (name, prompt)
    for name, messages in CONVERSATIONS.items()
    for prompt in (False, True)
    if not prompt or messages[-1].role == "user"  # a generation prompt follows a user turn
]


def _processor(tokenizer) -> GraftProcessor:
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    return GraftProcessor(tokenizer, tiny_image_processor(), 4, template="smollm2")


@pytest.fixture(scope="module")
def tiny_processor() -> GraftProcessor:
    tokenizer = tiny_tokenizer(extra_special=CHATML)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return _processor(tokenizer)


@pytest.fixture(scope="module")
def real_processor(smollm2_checkpoint) -> GraftProcessor:
    tokenizer = load_tokenizer(str(smollm2_checkpoint))
    assert tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    return _processor(tokenizer)


def _as_chat(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _check_against_smollm2(processor: GraftProcessor, name: str, add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[name]
    tokenizer = processor.tokenizer
    ids, labels = processor.encode_text(messages, 0, add_generation_prompt)
    theirs = tokenizer.apply_chat_template(
        _as_chat(messages),
        chat_template=SMOLLM2_CHAT_TEMPLATE,
        tokenize=True,
        add_generation_prompt=add_generation_prompt,
    )["input_ids"]
    assert ids == theirs
    # supervised: each assistant answer and its <|im_end|>, nothing else (not the "\n" after it)
    answers = [m.content for m in messages if m.role == "assistant"]
    supervised = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "".join(f"{a}<|im_end|>" for a in answers)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(labels, ids, strict=True))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert supervised.count(im_end) == len(answers)
    ends = [i for i, t in enumerate(ids) if t == im_end and labels[i] != IGNORE_INDEX]
    assert all(labels[i + 1] == IGNORE_INDEX for i in ends)  # the newline after each answer


@pytest.mark.parametrize(("name", "add_generation_prompt"), CASES)
def test_tiny_tokenizer_gives_smollm2s_own_ids(tiny_processor, name, add_generation_prompt):
    _check_against_smollm2(tiny_processor, name, add_generation_prompt)


@pytest.mark.parametrize(("name", "add_generation_prompt"), CASES)
def test_real_smollm2_tokenizer_gives_its_own_ids(real_processor, name, add_generation_prompt):
    _check_against_smollm2(real_processor, name, add_generation_prompt)


def test_template_settings():
    template = get_template("smollm2")
    assert not template.add_bos and template.stop == "<|im_end|>"
    assert template.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    rendered = template.render(CONVERSATIONS["one turn"]).text
    assert rendered.endswith(f"<|im_start|>assistant\n{A1}<|im_end|>\n")


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_shipped_chat_template_renders_as_smollm2s_own(tiny_processor, name):
    chat = _as_chat(CONVERSATIONS[name])
    for prompt in (False, True):
        ours, theirs = (
            tiny_processor.tokenizer.apply_chat_template(
                chat, chat_template=jinja, tokenize=False, add_generation_prompt=prompt
            )
            for jinja in (get_template("smollm2").chat_template, SMOLLM2_CHAT_TEMPLATE)
        )
        assert ours == theirs


def test_exported_llava_processor_carries_the_template():
    # LLaVA's processor passes images as typed content parts, which SmolLM2's own template (it
    # adds message['content'] to strings) cannot render: graft ships its equivalent that can
    tokenizer = tiny_tokenizer(extra_special=CHATML)
    model = compose(tiny_vision(), tiny_llm(len(tokenizer) + 1), tokenizer).eval()
    processor = GraftProcessor(tokenizer, tiny_image_processor(), model.config.image_seq_length, "smollm2")
    llava = llava_processor(model, processor)
    assert llava.chat_template == get_template("smollm2").chat_template
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q1}]}]
    expected = processor.template.render([Message("user", f"<image>\n{Q1}")], add_generation_prompt=True)
    assert llava.apply_chat_template(chat, add_generation_prompt=True) == expected.text
