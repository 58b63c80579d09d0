"""Where a model of the shapes world fails: perception, alignment or reasoning.

Measurements beside the held-out accuracy (the vision probe is ``probe.py``):

- ``caption_accuracy``: does the stage-1 model name what is in a held-out image? Its caption is
  read for every "colour shape" it mentions and compared, as a multiset, with the scene.
- ``word_readout``: do the soft tokens themselves say the scene's colours and shapes, read as
  their nearest words (what word alignment aims at)?
- ``text_upper_bound``: the same questions answered by a model with the scene's symbolic
  description (captions and boxes) in place of the image: what perfect perception would give
  this LLM, so the gap to the seeing score is what perception and alignment still cost.
- ``exact_token_bound``: the same questions answered by the model with the grounding's exact
  target tokens in place of its connector's: what perfect perception gives it in the grounding's
  token design, so the gap to its own score is perception's and the rest the LLM's reading.
- ``which_image_text_bound``: the world's DEMON which-image questions with each image's
  description in its place: can the LLM choose among images at all when it perceives perfectly?
- ``text_question_records``: the stage-2 question records with that description in place of
  the image, to train the same LLM as if it saw perfectly (``benchmarks/text_ceiling.py``).
- ``presence_questions``: the easiest image questions (is there a red object? which of these
  colours is in the image?), to train and score a perception warm-up before stage 2
  (``benchmarks/perception_warmup.py``, the demo's ``perceive`` step).

Both take ``layout`` (``with_context``): the captions and boxes, the one sentence naming every
object's size, colour, shape and place (the second reference caption), or the grounding's grid
in words, two per object: the image tokens' text twin.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from graft.eval.answers import parse_yesno, score_answer
from graft.eval.metrics.demon import score_sample
from graft.eval.readers.base import IMAGE_MARKER
from graft.eval.readers.demon import read_demon
from graft.eval.readers.questions import read_questions
from graft.eval.tasks import get_task
from graft.generate import generate_answers, length_order
from graft.processing import load_image
from graft.templates import Message

from .bench_demon import WHICH_IMAGE
from .describe import captions, context_text
from .grounding import CELLS, CellLayout, cell_names, grounding_targets
from .instructions import BRIEF_PROMPTS
from .questions import GRID, NAMED_SUFFIX, SEEN_SUFFIX, presence, presence_choice, reply
from .scene import COLORS, SHAPES, Scene

_MENTION = re.compile(rf"\b({'|'.join(COLORS)}) (?:(?:small|large) )?({'|'.join(SHAPES)})s?\b")


def heldout_scenes(world: Path) -> dict[str, dict]:
    """The world's test images' rows (``meta/test.jsonl``: id, image, scene), by id."""
    rows = [json.loads(line) for line in (world / "meta" / "test.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


def mentioned_objects(text: str) -> Counter:
    """Every "colour shape" a text names (sizes between them allowed), counted."""
    return Counter(_MENTION.findall(text.lower()))


def caption_accuracy(
    model: Any, processor: Any, world_dir: str | os.PathLike, limit: int | None = 200, batch_size: int = 32
) -> dict[str, float]:
    """Held-out captions of a stage-1 model: the share naming exactly the scene's objects
    (``caption/exact``), and object recall and precision over all images."""
    world = Path(world_dir)
    rows = list(heldout_scenes(world).values())[:limit]
    convs = [[Message("user", f"{processor.image_token}\n{BRIEF_PROMPTS[0]}")] for _ in rows]
    images = [[load_image(world / r["image"])] for r in rows]
    answers = generate_answers(model, processor, convs, images, max_new_tokens=64, batch_size=batch_size)
    exact, hits, said, truth = 0, 0, 0, 0
    for row, answer in zip(rows, answers, strict=True):
        scene = Scene.from_dict(row["scene"])
        want = Counter((o.color, o.shape) for o in scene.objects)
        got = mentioned_objects(answer)
        exact += got == want
        hits += sum((got & want).values())
        said += sum(got.values())
        truth += sum(want.values())
    return {
        "caption/exact": exact / max(len(rows), 1),
        "caption/object_recall": hits / max(truth, 1),
        "caption/object_precision": hits / max(said, 1),
        "caption/n": len(rows),
    }


@torch.no_grad()
def word_readout(
    model: Any, processor: Any, world_dir: str | os.PathLike, limit: int | None = 200, batch_size: int = 32
) -> dict[str, float]:
    """Do an aligned model's soft tokens say the scene's words? Each held-out image's tokens are
    read as their nearest input embedding (by cosine); the colour and shape words read are
    compared, as sets, with the scene's (``words/colour_recall``, ``words/shape_precision`` ...),
    and ``words/cosine`` is the mean cosine of a token with its nearest word (1: the token is a
    word). Nothing for a connector whose tokens depend on the question (they have no one reading)."""
    from torch.nn import functional as F

    if model.connector.needs_instruction or model.connector.needs_llm_hidden:
        return {}
    world = Path(world_dir)
    rows = list(heldout_scenes(world).values())[:limit]
    table = F.normalize(model.get_input_embeddings().weight.detach().float(), dim=-1)
    words = [processor.tokenizer.decode([i]).strip().lower() for i in range(table.shape[0])]
    found = {"colour": [0, 0, 0], "shape": [0, 0, 0]}  # hits, read, in the scene
    cosines = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pixels = processor.preprocess_images([load_image(world / r["image"]) for r in chunk])
        tokens = model.get_image_features(pixel_values=pixels.to(device)).float()
        best = F.normalize(tokens, dim=-1) @ table.T
        cosine, index = best.max(-1)
        cosines.append(cosine.flatten())
        for row, ids in zip(chunk, index.tolist(), strict=True):
            scene, read = Scene.from_dict(row["scene"]), {words[i] for i in ids}
            for kind, vocabulary, truth in (
                ("colour", COLORS, {o.color for o in scene.objects}),
                ("shape", SHAPES, {o.shape for o in scene.objects}),
            ):
                said = read & set(vocabulary)
                found[kind][0] += len(said & truth)
                found[kind][1] += len(said)
                found[kind][2] += len(truth)
    out = {f"words/{k}_recall": v[0] / max(v[2], 1) for k, v in found.items()}
    out |= {f"words/{k}_precision": v[0] / max(v[1], 1) for k, v in found.items()}
    out["words/cosine"] = float(torch.cat(cosines).mean()) if cosines else 0.0
    return out


#: how a question's context describes the scene (``with_context``)
LAYOUTS = ("context", "brief", "grid")


def with_context(scene: Scene, question: str, layout: str = "context") -> str:
    """A question with the scene's symbolic description where the image stood: ``context``, its
    captions and one box line per object; ``brief``, the one sentence that names every object's
    size, colour, shape and place; ``grid``, the grounding's 4x4 cells in words ("background" or
    "red circle"), cells joined by commas and rows by lines, the text twin of the image tokens."""
    if layout == "grid":
        names = cell_names(scene, GRID)
        rows = [", ".join(names[r : r + GRID]) for r in range(0, len(names), GRID)]
        return "Image:\n" + "\n".join(rows) + f"\n{question}"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return f"Context: {captions(scene)[1] if layout == 'brief' else context_text(scene)}\n{question}"


#: the held-out question families (``eval/{family}.jsonl``)
QUESTION_FAMILIES = ("binary", "mcq")
#: answer length of the bounds: the evaluation's question task's (``task_files/questions.yaml``)
ANSWER_TOKENS: int = get_task("questions").generation["max_new_tokens"]


def question_family(question: str, answer: str) -> str | None:
    """``binary`` (a yes/no question asked for the world's own reply, which ends in a verdict:
    "square, so no"), ``mcq`` (asked for the option's text and letter) or None for other turns,
    those asked as LLaVA asks (``QA.as_llava``) included: the held-out questions' formats."""
    if question.endswith(NAMED_SUFFIX):
        return "mcq"
    if question.endswith(SEEN_SUFFIX) and parse_yesno(answer) in ("yes", "no"):
        return "binary"
    return None


def text_question_records(
    world_dir: str | os.PathLike,
    image_token: str = "<image>",
    layout: str = "context",
    family: str | None = None,
    with_image: bool = False,
) -> list[dict[str, Any]]:
    """The world's stage-2 multi-question records (``qtype`` "questions") with the scene's
    description in place of their image: text-only records in the same format. With ``family``
    (binary or mcq), one single-turn record per question of that family instead, each with the
    description, or (``with_image``) with the record's image as the image twin of that text."""
    if with_image and family is None:
        raise ValueError(
            "with_image needs a family: the multi-question records with images are stage2.json's"
        )
    if family not in (None, *QUESTION_FAMILIES):
        raise ValueError(f"family must be one of {', '.join(QUESTION_FAMILIES)} (or None), not {family!r}")
    world = Path(world_dir)
    scenes = {}
    for line in (world / "meta" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes[row["image"]] = row["scene"]
    out = []
    for record in json.loads((world / "stage2.json").read_text()):
        if record.get("qtype") != "questions":
            continue
        scene = Scene.from_dict(scenes[record["image"]])
        turns = [dict(t) for t in record["conversations"]]
        turns[0]["value"] = turns[0]["value"].replace(image_token, "", 1).lstrip("\n")
        if family is None:
            turns[0]["value"] = with_context(scene, turns[0]["value"], layout)
            out.append({"id": record["id"], "conversations": turns})
            continue
        for k in range(0, len(turns) - 1, 2):
            question, answer = turns[k]["value"], turns[k + 1]["value"]
            if question_family(question, answer) != family:
                continue
            rid = f"{record['id']}-{k // 2}"
            if with_image:
                human = {"from": "human", "value": f"{image_token}\n{question}"}
                out.append({"id": rid, "image": record["image"], "conversations": [human, turns[k + 1]]})
            else:
                human = {"from": "human", "value": with_context(scene, question, layout)}
                out.append({"id": rid, "conversations": [human, turns[k + 1]]})
    return out


def presence_questions(
    world_dir: str | os.PathLike, split: str, attribute: str = "color", seed: int = 0, choice: bool = False
) -> list[dict[str, Any]]:
    """One attribute-presence question per image of ``split`` as rows of graft's question-file
    format: yes/no (``questions.presence``, answers alternating Yes / No) or, with ``choice``,
    letter-answer (``questions.presence_choice``; images that leave fewer than three values out
    get none)."""
    world = Path(world_dir)
    rng = random.Random(f"presence-{split}-{attribute}-{seed}" + ("-choice" if choice else ""))
    rows = []
    for i, line in enumerate((world / "meta" / f"{split}.jsonl").read_text().splitlines()):
        row = json.loads(line)
        scene = Scene.from_dict(row["scene"])
        qa = presence_choice(scene, rng, attribute) if choice else presence(scene, rng, i % 2 == 0, attribute)
        if qa is not None:
            fields = {"question": qa.question, "answer": qa.answer, "qtype": qa.qtype}
            if qa.choices:
                fields["choices"] = qa.choices
            if qa.seen:
                fields["seen"] = qa.seen
            rid = f"{row['id']}-{'pc' if choice else 'p'}"
            rows.append({"id": rid, "image": row["image"]} | fields)
    return rows


def question_training_records(
    rows: list[dict[str, Any]], image_token: str = "<image>"
) -> list[dict[str, Any]]:
    """Question-file rows as single-turn LLaVA training records (image, question, ``reply``)."""
    return [
        {
            "id": row["id"],
            "image": row["image"],
            "conversations": [
                {"from": "human", "value": f"{image_token}\n{row['question']}"},
                {"from": "gpt", "value": reply(row["answer"], row.get("choices"), row.get("seen"))},
            ],
        }
        for row in rows
    ]


def text_upper_bound(
    model: Any,
    processor: Any,
    world_dir: str | os.PathLike,
    limit: int | None = 200,
    batch_size: int = 32,
    layout: str = "context",
    per_type: bool = False,
) -> dict[str, float]:
    """Held-out binary and multiple-choice accuracy with the scene's description in place of the
    image (``{family}/accuracy_text``; ``per_type``: also ``qtype/{family}_{qtype}/accuracy_text``)."""
    world = Path(world_dir)
    scenes = heldout_scenes(world)
    out: dict[str, float] = {}
    for family in QUESTION_FAMILIES:
        questions = read_questions(world / "eval" / f"{family}.jsonl", world).samples[:limit]
        convs = []
        for q in questions:
            scene = Scene.from_dict(scenes[str(q.id).split("-")[0]]["scene"])
            convs.append([Message("user", with_context(scene, q.meta["question"], layout))])
        answers = generate_answers(
            model, processor, convs, [[] for _ in convs], max_new_tokens=ANSWER_TOKENS, batch_size=batch_size
        )
        out |= _accuracy(family, "text", questions, answers, per_type)
    return out


def which_image_text_bound(
    model: Any,
    processor: Any,
    world_dir: str | os.PathLike,
    limit: int | None = 100,
    batch_size: int = 32,
    layout: str = "context",
    max_new_tokens: int = 32,
) -> dict[str, float]:
    """The world's DEMON which-image accuracy (``which_image/accuracy_text``, by DEMON's rule)
    with each image replaced by its scene's description (``layout``: ``context``, its captions and
    boxes, or ``brief``, its one sentence, as ``with_context``): whether the LLM chooses among
    images when perception is perfect.
    ``which_image/accuracy_text_lenient`` reads the image an answer names anywhere ("The image
    with the blue square is Image B."), and ``which_image/picked_<letter>`` counts the images so
    named (``none``: no one image)."""
    if layout not in ("context", "brief"):
        raise ValueError(f"unknown layout {layout!r}; valid: context, brief")
    world = Path(world_dir)
    scenes = heldout_scenes(world)
    samples = read_demon(world / "bench" / "demon", tasks=[WHICH_IMAGE]).samples[:limit]

    def described(path: Path) -> str:
        scene = Scene.from_dict(scenes[path.stem]["scene"])
        return captions(scene)[1] if layout == "brief" else context_text(scene)

    convs = []
    for s in samples:
        parts = s.prompt.split(IMAGE_MARKER)
        if len(parts) != len(s.images) + 1:
            raise ValueError(f"{s.where}: {len(parts) - 1} image markers for {len(s.images)} images")
        text = parts[0] + "".join(described(p) + rest for p, rest in zip(s.images, parts[1:], strict=True))
        convs.append([Message("user", text)])
    answers = generate_answers(
        model, processor, convs, [[] for _ in convs], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    out: dict[str, float] = {}
    for lenient, key in ((False, "accuracy_text"), (True, "accuracy_text_lenient")):
        results = [
            score_sample(s.meta["kind"], a, s.target, s.meta.get("choices"), lenient)
            for s, a in zip(samples, answers, strict=True)
        ]
        out[f"which_image/{key}"] = sum(r["score"] for r in results) / max(len(results), 1)
    picked = Counter(r["picked"] or "none" for r in results)
    return out | {f"which_image/picked_{k}": v for k, v in sorted(picked.items())}


def _accuracy(
    family: str, how: str, questions: list[Any], answers: list[str], per_type: bool
) -> dict[str, float]:
    """``{family}/accuracy_{how}`` of ``answers`` to ``questions`` (and with ``per_type`` each
    question type's, ``qtype/{family}_{type}/accuracy_{how}``)."""
    right = [
        score_answer(a, q.target, q.meta.get("choices"))[1] for q, a in zip(questions, answers, strict=True)
    ]
    out = {f"{family}/accuracy_{how}": sum(right) / max(len(right), 1)}
    if per_type:
        by_type: dict[str, list[bool]] = {}
        for q, r in zip(questions, right, strict=True):
            by_type.setdefault(q.meta["qtype"], []).append(r)
        out |= {f"qtype/{family}_{t}/accuracy_{how}": sum(v) / len(v) for t, v in sorted(by_type.items())}
    return out


@contextmanager
def _image_tokens(model: Any, tokens: torch.Tensor) -> Iterator[None]:
    """``model`` hands its LLM ``tokens`` ``[N, image_seq_length, d]`` for the N images of a
    forward pass in place of its connector's (a hook on the instance's ``get_image_features``,
    removed on exit)."""
    own = model.get_image_features

    def given(pixel_values: Any = None, vision_features: Any = None, **context: Any) -> torch.Tensor:
        computed = own(pixel_values, vision_features, **context)
        if computed.shape != tokens.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} given for image tokens {tuple(computed.shape)}")
        return tokens.to(computed)

    model.get_image_features = given
    try:
        yield
    finally:
        del model.get_image_features


def exact_token_bound(
    model: Any,
    processor: Any,
    world_dir: str | os.PathLike,
    limit: int | None = 200,
    batch_size: int = 32,
    cells: str = CELLS,
) -> dict[str, float]:
    """Held-out binary and multiple-choice accuracy with the grounding's exact target tokens
    (``graft.world.grounding``, cells naming the object of ``cells``) in place of the connector's
    (``{family}/accuracy_exact_tokens``): what the LLM makes of perfect perception in the
    grounding's token design. Beside the model's own accuracy, the gap is what perception still
    costs and the rest is how the LLM reads the tokens. For a connector whose tokens are the cells
    of a square grid (a projector's)."""
    world = Path(world_dir)
    scenes = heldout_scenes(world)
    table = model.get_input_embeddings().weight.detach().float()
    layout = CellLayout.of(model.config.connector)
    out: dict[str, float] = {}
    for family in QUESTION_FAMILIES:
        questions = read_questions(world / "eval" / f"{family}.jsonl", world).samples[:limit]
        # batches of like length end together (``generate``'s own order, kept across the batches
        # each of which gets its own tokens)
        prompts = [[Message("user", q.prompt)] for q in questions]
        questions = [
            questions[i] for i in length_order(processor, prompts, [len(q.images) for q in questions])
        ]
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            shown = [Scene.from_dict(scenes[str(q.id).split("-")[0]]["scene"]) for q in batch]
            targets = grounding_targets(
                shown, model.config.image_seq_length, processor.tokenizer, table, cells, layout
            )
            with _image_tokens(model, targets):
                answers += generate_answers(
                    model,
                    processor,
                    [[Message("user", q.prompt)] for q in batch],
                    [[load_image(path) for path in q.images] for q in batch],
                    max_new_tokens=ANSWER_TOKENS,
                    batch_size=len(batch),
                )
        out |= _accuracy(family, "exact_tokens", questions, answers, per_type=False)
    return out
