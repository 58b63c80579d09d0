import warnings

import pytest
import torch

from graft import generate
from graft.generate import ChatSession, Reply, _decode, answer_stops, generate_answers
from graft.processing import GraftProcessor, SampleTooLongError, collate_samples
from graft.prompts import ImageMarkerError
from graft.templates import Message

from tiny import bytelevel_tokenizer, random_image, tiny_image_processor, tiny_llm, tiny_model_and_processor

torch.set_num_threads(1)


def _tiny_sensitive(template: str = "vicuna_v1"):
    """The tiny model with larger random weights: its greedy answers depend on the prompt and the
    images (at the default init every prompt gets nearly the same answer, which proves nothing)."""
    model, processor = tiny_model_and_processor(template=template)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model, processor


@pytest.fixture(scope="module")
def sensitive():
    return _tiny_sensitive()


# prompts of different lengths with 0, 1 and 2 images, markers in different places
CONVS = [
    [Message("user", "Hi")],
    [Message("user", "<image>\nIs there a red circle in the image?")],
    [Message("user", "Compare <image> and <image>: how many objects are there on the left?")],
    [Message("user", "<image>\nA")],
    [Message("user", "<image>\nB")],
]
IMAGES = [[], [random_image(1)], [random_image(2), random_image(3)], [random_image(4)], [random_image(5)]]


def test_batched_greedy_equals_one_by_one(sensitive):
    model, processor = sensitive
    batched = generate_answers(model, processor, CONVS, IMAGES, max_new_tokens=12, batch_size=5)
    uneven = generate_answers(model, processor, CONVS, IMAGES, max_new_tokens=12, batch_size=2)
    given = generate_answers(
        model, processor, CONVS, IMAGES, max_new_tokens=12, batch_size=2, by_length=False
    )
    single = [
        generate_answers(model, processor, [c], [i], max_new_tokens=12)[0]
        for c, i in zip(CONVS, IMAGES, strict=True)
    ]
    assert batched == single == uneven == given
    assert len(set(single)) >= 4, "answers should differ between prompts, or the comparison proves nothing"


def test_length_order_batches_the_longest_prompts_first(sensitive, monkeypatch):
    model, processor = sensitive
    order = generate.length_order(processor, CONVS, [len(i) for i in IMAGES])
    # two image blocks, one image block and a question, the two one-letter prompts (tie: given
    # order), no image
    assert order == [2, 1, 3, 4, 0]
    batches = []
    real = processor.prompts

    def spy(convs, images):
        batches.append([CONVS.index(c) for c in convs])
        return real(convs, images)

    monkeypatch.setattr(processor, "prompts", spy)
    generate_answers(model, processor, CONVS, IMAGES, max_new_tokens=2, batch_size=2)
    assert batches == [[2, 1], [3, 4], [0]]
    batches.clear()
    generate_answers(model, processor, CONVS, IMAGES, max_new_tokens=2, batch_size=2, by_length=False)
    assert batches == [[0, 1], [2, 3], [4]]
    # a conversation whose markers do not match its images is named by its own index
    with pytest.raises(ImageMarkerError, match="prompt 3"):
        generate_answers(model, processor, CONVS, IMAGES[:3] + [[]] + IMAGES[4:], batch_size=2)


def test_images_change_the_answer(sensitive):
    model, processor = sensitive
    conv = [Message("user", "<image>\nWhat is this?")]
    a = generate_answers(
        model, processor, [conv, conv], [[random_image(7)], [random_image(8)]], max_new_tokens=8
    )
    assert a[0] != a[1]


def test_generation_with_cache_equals_without(sensitive):
    model, processor = sensitive
    cached = generate_answers(model, processor, CONVS, IMAGES, max_new_tokens=10, batch_size=5)
    uncached = generate_answers(
        model, processor, CONVS, IMAGES, max_new_tokens=10, batch_size=5, use_cache=False
    )
    assert cached == uncached


def test_sampling_with_seed_is_reproducible_and_leaves_global_rng(sensitive):
    model, processor = sensitive
    kw = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "batch_size": 2}
    state = torch.random.get_rng_state()
    a = generate_answers(model, processor, CONVS, IMAGES, seed=3, **kw)
    assert torch.equal(state, torch.random.get_rng_state())
    b = generate_answers(model, processor, CONVS, IMAGES, seed=3, **kw)
    c = generate_answers(model, processor, CONVS, IMAGES, seed=4, **kw)
    assert a == b
    assert a != c


def test_model_is_left_in_training_mode_when_it_was(sensitive):
    model, processor = sensitive
    model.train()
    try:
        generate_answers(model, processor, CONVS[:1], IMAGES[:1], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()


def test_decode_stops_at_eos_and_stop_string():
    _, processor = tiny_model_and_processor(template="chatml")
    tok = processor.tokenizer
    ids = tok("Yes it is", add_special_tokens=False)["input_ids"]
    junk = tok(" chat", add_special_tokens=False)["input_ids"]
    ended = _decode(ids + [tok.eos_token_id] + junk, [tok.eos_token_id], [], processor, limit=20)
    assert ended == Reply("Yes it is", cut=False)
    stop_ids = tok("<|im_end|> more", add_special_tokens=False)["input_ids"]
    assert _decode(ids + stop_ids, [tok.eos_token_id], ["<|im_end|>"], processor, 20) == Reply("Yes it is")
    # no end within the limit: cut; fewer new tokens than the limit (its batch stopped early): not
    assert _decode(ids, [tok.eos_token_id], ["<|im_end|>"], processor, len(ids)) == Reply(
        "Yes it is", cut=True
    )
    assert not _decode(ids, [tok.eos_token_id], ["<|im_end|>"], processor, len(ids) + 1).cut


def test_vicuna_answer_ends_at_its_turn_end_or_a_made_up_next_turn(sensitive):
    model, processor = sensitive  # vicuna_v1
    tok = processor.tokenizer
    eos_ids, stops = answer_stops(model, processor)
    # '</s>' is this tokenizer's EOS token: a token-level stop; 'USER:' is text
    assert tok.convert_tokens_to_ids("</s>") in eos_ids and stops == ["USER:"]
    ran_on = tok(" green USER: Is it red? ASSISTANT: green", add_special_tokens=False)["input_ids"]
    assert _decode(ran_on, eos_ids, stops, processor, len(ran_on)) == Reply("green")


def test_multi_token_turn_end_is_cut_from_the_text():
    tokenizer = bytelevel_tokenizer("green red USER: Is it red? ASSISTANT: green</s>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    processor = GraftProcessor(tokenizer, tiny_image_processor(), 4, template="vicuna_v1")
    model = tiny_llm(len(tokenizer))
    eos_ids, stops = answer_stops(model, processor)
    assert stops == ["</s>", "USER:"]
    assert len(tokenizer("</s>", add_special_tokens=False)["input_ids"]) > 1
    for tail in ["</s>USER: Is it red? ASSISTANT: green", " USER: Is it red?</s>", "</s>"]:
        ids = tokenizer(" green" + tail, add_special_tokens=False)["input_ids"]
        assert _decode(ids, eos_ids, stops, processor, len(ids)) == Reply("green")


def test_generate_answers_cuts_a_run_on_answer(sensitive, monkeypatch):
    # a model that writes its turn end as text and goes on with a made-up next turn: generation is
    # told to stop at those texts, and what it wrote past them never reaches the answer
    model, processor = sensitive
    tok = processor.tokenizer
    ran_on = tok(" green USER: Is it red? ASSISTANT: green", add_special_tokens=False)["input_ids"]
    seen = {}

    def fake_generate(input_ids, **kwargs):
        seen.update(kwargs)
        return torch.cat([input_ids, torch.tensor([ran_on] * len(input_ids))], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    assert generate_answers(model, processor, CONVS[:2], IMAGES[:2]) == ["green", "green"]
    assert seen["stop_strings"] == ["USER:"] and seen["tokenizer"] is tok


def test_generation_emits_no_warnings(sensitive, capfd):
    model, processor = sensitive
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_answers(model, processor, CONVS[:2], IMAGES[:2], max_new_tokens=4)
        generate_answers(model, processor, CONVS[:2], IMAGES[:2], max_new_tokens=4, do_sample=True, seed=0)
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""


def test_stop_string_template_generates():
    # chatml's stop string is several tokens in the tiny tokenizer: a text-level criterion is used
    model, processor = tiny_model_and_processor(template="chatml")
    out = generate_answers(model, processor, CONVS[:2], IMAGES[:2], max_new_tokens=6)
    assert len(out) == 2 and all("<|im_end|>" not in a for a in out)


def test_answers_are_new_tokens_only(sensitive):
    model, processor = sensitive
    batch = processor.prompts(CONVS[1:2], IMAGES[1:2])
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    expected = _decode(new, *answer_stops(model, processor), processor, 8).text
    assert generate_answers(model, processor, CONVS[1:2], IMAGES[1:2], max_new_tokens=8) == [expected]


def _manual_answer(model, processor, messages, images, max_new_tokens):
    sample = processor.encode(messages, images, add_generation_prompt=True)
    batch = collate_samples([sample], processor.tokenizer.pad_token_id, "left")
    batch.pop("labels")
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    eos = processor.tokenizer.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip(), sample.input_ids


def test_chat_session_second_turn_sees_first_turn_images(sensitive, monkeypatch):
    model, processor = sensitive
    seen = []
    original = processor.prompts

    def spy(conversations, images):
        seen.append((conversations, images))
        return original(conversations, images)

    monkeypatch.setattr(processor, "prompts", spy)
    img1, img2 = random_image(11), random_image(12)
    chat = ChatSession(model, processor, max_new_tokens=8)
    first = chat.ask("What is in the picture?", images=[img1])
    second = chat.ask("And how does <image> differ from it?", images=[img2])

    history = [
        Message("user", "<image>\nWhat is in the picture?"),
        Message("assistant", first),
        Message("user", "And how does <image> differ from it?"),
    ]
    assert chat.messages[:3] == history and chat.images == [img1, img2]
    expected, expected_ids = _manual_answer(model, processor, history, [img1, img2], 8)
    assert second == expected
    # the second prompt held the full history: both images and the first answer
    conv, imgs = seen[-1]
    assert conv == [history] and imgs == [[img1, img2]]
    assert processor.prompts is spy
    ids = original(conv, imgs)["input_ids"][0].tolist()
    assert ids == expected_ids
    assert ids.count(model.config.image_token_id) == 2 * model.config.image_seq_length


def test_chat_session_without_first_images_differs(sensitive):
    # the same second turn without the first image gives another answer: the history matters
    model, processor = sensitive
    img1, img2 = random_image(11), random_image(12)
    chat = ChatSession(model, processor, max_new_tokens=8)
    chat.ask("What is in the picture?", images=[img1])
    with_history = chat.ask("And how does <image> differ from it?", images=[img2])
    fresh = ChatSession(model, processor, max_new_tokens=8).ask(
        "And how does <image> differ from it?", images=[img2]
    )
    assert with_history != fresh


def test_chat_session_system_prompt_and_marker_errors(sensitive):
    model, processor = sensitive
    chat = ChatSession(model, processor, system="Be brief.", max_new_tokens=4)
    assert chat.conversation() == [Message("system", "Be brief.")]
    with pytest.raises(ImageMarkerError, match="2 <image> marker"):
        chat.ask("<image> and <image>", images=[random_image(1)])
    with pytest.raises(ImageMarkerError, match="0 image"):
        chat.ask("What is <image>?")
    assert chat.messages == [] and chat.images == []  # failed turns leave no trace
    chat.ask("Two pictures", images=[random_image(1), random_image(2)])
    assert chat.messages[0].content == "<image>\n<image>\nTwo pictures"
    assert chat.conversation()[0] == Message("system", "Be brief.")
    chat.reset()
    assert chat.messages == [] and chat.images == []


def test_chat_session_answers_within_the_context(sensitive, monkeypatch):
    """An answer stops where the model's context ends; a conversation that fills it is an error
    that says to start again, not a prompt run past the model's positions."""
    model, processor = sensitive
    budgets = []

    def answers(model, processor, conversations, images, settings):
        budgets.append(settings.max_new_tokens)
        return ["ok"]

    monkeypatch.setattr(generate, "generate_answers", answers)
    prompt = len(processor.encode_text([Message("user", "Hi")], 0, add_generation_prompt=True)[0])
    monkeypatch.setattr(processor, "max_length", prompt + 5)
    chat = ChatSession(model, processor, max_new_tokens=64)
    assert chat.ask("Hi") == "ok" and budgets == [5]
    with pytest.raises(
        SampleTooLongError, match=rf"turn 2: the conversation is \d+ tokens, .* at most {prompt + 5};"
    ):
        chat.ask("And why?")
    assert len(chat.messages) == 2  # the failed turn left no trace
    monkeypatch.setattr(processor, "max_length", 10_000)  # the LLM's positions bound it too
    monkeypatch.setattr(model.config.text_config, "max_position_embeddings", prompt + 3)
    chat.reset()
    chat.ask("Hi")
    assert budgets == [5, 3]
