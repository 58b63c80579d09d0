"""Single questions with exact answers: yes/no, 4-way multiple choice and short answer.

The same generators feed stage-2 instruction data, the evaluation files and the LLM's text
corpus, so a question is worded identically wherever it appears. Families (`qtype`):
existence, color, shape, count, position.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

from graft.prompts import MC_ANSWER, SHORT_ANSWER

from .describe import number_word
from .scene import COLORS, SHAPES, Obj, Scene

SHORT_SUFFIX = "\n" + SHORT_ANSWER
MCQ_SUFFIX = "\n" + MC_ANSWER
#: what the world's own replies are asked with: a yes/no reply names what decides the answer
#: before it ("circle, so no"), a multiple-choice reply the option's text before its letter
#: ("red (B)"). LLaVA's instructions above are what benchmarks ask with, and a share of stage-2
#: turns answers them as benchmarks' rules read an answer (``QA.as_llava``)
SEEN_SUFFIX = "\nSay what decides it, then answer yes or no."
NAMED_SUFFIX = "\nAnswer with the option's text, then its letter."
LETTERS = "ABCD"
#: the side of the demo's grid of image cells (``graft.world.grounding``): its tokens come row by
#: row, each cell's words followed by its row's and its column's markers, the digits 1 to ``GRID``
GRID = 4


SO = ", so "  # between a yes/no reply's seen value and its verdict (``reply``)


def reply(answer: str, choices: list[str] | None = None, seen: str | None = None) -> str:
    """What a training record answers: the answer led by what the image shows that decides it,
    so the LLM names what it sees before it answers. For multiple choice the option's text and
    then its letter ("red (B)"): SmolLM2-135M trained on bare letters answered one or two letters
    to everything (docs/demo-history.md). For yes/no with ``seen`` the seen value and then the
    verdict ("circle, so no"), which ``parse_yesno`` reads from the end. The answer itself
    otherwise. Evaluation keys stay the letter or Yes / No."""
    if choices:  # with ``seen`` what decides it first (a position question's cells)
        named = f"{choices[LETTERS.index(answer)]} ({answer})"
        return f"{seen}: {named}" if seen else named
    if seen:
        return f"{seen}{SO}{answer.lower()}"
    return answer


def asked(seen: str, value: str) -> str:
    """``seen`` followed by the value the question asks about ("... below, asked above"), for the
    long replies (a count's, a position's): the verdict then compares two neighbouring words. After
    a reply of 20 tokens naming cells and digits, the verdict followed the reply's relation in 398
    of 475 position replies, against 473 of 474 after the short "row 3, row 1: below"; the
    stage-2 records answer no two times in three (``instructions.YES_SHARE``), so a verdict that
    loses the question's value falls to "no". With the value asked, 477 of 478 (yes/no position
    0.703 -> 0.902; docs/demo-history.md)."""
    return f"{seen}, asked {value}"


def seen_of(text: str) -> str | None:
    """What a yes/no reply in ``reply``'s form names before its verdict ("row 2, row 4: above" of
    "row 2, row 4: above, so yes"), stripped; None for a reply without one ("Yes")."""
    head, so, _ = text.strip().rpartition(SO)
    return head.strip() if so else None


FAMILIES = ("existence", "color", "shape", "count", "position")
MARGIN = 0.08  # centres closer than this along an axis are not called left/right (above/below)


@dataclass
class QA:
    question: str  # full text as the model sees it, suffix included, no <image>
    answer: str
    qtype: str  # one of FAMILIES
    fmt: str  # "yesno" | "mcq" | "short"
    choices: list[str] | None = None
    hard: bool = False  # a yes/no negative built from attributes present in the image
    axis: str | None = None  # position questions: the axis ("x" or "y") the answer depends on
    seen: str | None = None  # yes/no, MCQ position: what in the image decides the answer ("circle")
    llava: bool = False  # asked with LLaVA's instructions (``as_llava``)

    @property
    def reply(self) -> str:
        """The training target: the answer led by what decides it (``reply``), or as ``as_llava``."""
        if not self.llava:
            return reply(self.answer, self.choices, self.seen)
        if self.choices:  # ScienceQA's answer sentence after the option's text
            return f"{self.choices[LETTERS.index(self.answer)]}. The answer is {self.answer}."
        return self.answer

    def as_llava(self) -> QA:
        """The question asked with LLaVA's instructions (``SHORT_ANSWER``, ``MC_ANSWER``), as
        benchmarks ask, and answered as their rules read an answer: yes/no alone ("No": MME reads
        the first word), multiple choice with the option's text and then ScienceQA's answer
        sentence ("red. The answer is B.": LLaVA's ScienceQA rule reads the sentence, MMBench's
        the one letter; a bare letter, SmolLM2-135M answers at chance). A short-answer question
        is asked so already."""
        for own, plain in ((SEEN_SUFFIX, SHORT_SUFFIX), (NAMED_SUFFIX, MCQ_SUFFIX)):
            if self.question.endswith(own):
                return replace(self, question=self.question.removesuffix(own) + plain, llava=True)
        return self


def plural(shape: str) -> str:
    return shape + "s"


def refer(scene: Scene, obj: Obj) -> str | None:
    """Shortest phrase naming `obj` uniquely in the scene ('circle', 'red object', 'red circle', ...)."""
    objs = scene.objects
    for phrase, key in (
        (obj.shape, lambda o: o.shape),
        (f"{obj.color} object", lambda o: o.color),
        (obj.category, lambda o: (o.color, o.shape)),
        (f"{obj.size} {obj.category}", lambda o: (o.size, o.color, o.shape)),
    ):
        if sum(key(o) == key(obj) for o in objs) == 1:
            return phrase
    return None


def relation(a: Obj, b: Obj) -> str | None:
    """Where a is relative to b along the dominant axis, only when it is unambiguous."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= MARGIN and abs(dy) <= abs(dx) / 2:
        return "left" if dx < 0 else "right"
    if abs(dy) >= MARGIN and abs(dx) <= abs(dy) / 2:
        return "above" if dy < 0 else "below"
    return None


def cell_of(obj: Obj) -> tuple[int, int]:
    """The row and column of the grid cell that holds ``obj``'s centre, counted from 1 as the image
    tokens' markers count them (``GRID``)."""
    return min(int(obj.y * GRID), GRID - 1) + 1, min(int(obj.x * GRID), GRID - 1) + 1


def cells_seen(a: Obj, b: Obj, axis: str) -> str:
    """What decides where ``a`` is relative to ``b`` along ``axis``: both objects as the image
    tokens say them, each with its row's and its column's digit after its words
    (``cells_named``), then their rows ("row 3, row 1", "y") or their columns ("column 2,
    column 4", "x"), ``a``'s first. A yes/no reply that named the relation alone ("below, so no")
    SmolLM2 named at chance (held-out binary position 0.53 to 0.55 over three seeds: README); with
    the two digits first, the relation followed them in 461 of 474 replies, but the digits were
    each object's in about half (the markers before each cell's words); named after the objects'
    words, as the image tokens put them since the markers follow the words, they are copied from
    the image by an induction head (docs/demo-history.md)."""
    (ra, ca), (rb, cb) = cell_of(a), cell_of(b)
    digits = f"row {ra}, row {rb}" if axis == "y" else f"column {ca}, column {cb}"
    return f"{cells_named(a, b)}: {digits}"


def cells_named(a: Obj, b: Obj) -> str:
    """Both objects as the image tokens say them, each followed by its row's and its column's
    digit ("red circle 3 2, blue square 1 2"): its colour and shape whatever the question calls it
    by ("the circle", "the red object")."""
    (ra, ca), (rb, cb) = cell_of(a), cell_of(b)
    return f"{a.color} {a.shape} {ra} {ca}, {b.color} {b.shape} {rb} {cb}"


def cells_apart(a: Obj, b: Obj) -> str:
    """What decides a multiple-choice position answer, which must find the axis itself:
    ``cells_seen`` on the axis whose digits differ more (columns on a tie, 7% of the world's
    multiple-choice pairs, where the cells cannot decide)."""
    (ra, ca), (rb, cb) = cell_of(a), cell_of(b)
    return cells_seen(a, b, "y" if abs(ra - rb) > abs(ca - cb) else "x")


REL_PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
AXIS = {"left": "x", "right": "x", "above": "y", "below": "y"}


def _pairs(scene: Scene, only: bool = False) -> list[tuple[Obj, Obj, str, str, str]]:
    """Ordered pairs of uniquely nameable objects in a clear relation: (a, b, ref_a, ref_b, rel).
    With ``only``, just the pairs whose centres are also within ``MARGIN`` along the other axis, so
    ``rel`` is the only one of the four relations that holds: a multiple-choice question offers all
    four, and "left" 0.3 off with "below" 0.14 off has two true options."""
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            ra, rb, rel = refer(scene, a), refer(scene, b), relation(a, b)
            if not (ra and rb and rel):
                continue
            across = a.y - b.y if AXIS[rel] == "x" else a.x - b.x
            if not only or abs(across) < MARGIN:
                out.append((a, b, ra, rb, rel))
    return out


# ---------------------------------------------------------------- yes / no


def yesno(scene: Scene, rng: random.Random, answer: bool, qtype: str) -> QA | None:
    """A yes/no question of family `qtype` whose answer is `answer`; None if the scene cannot make one."""
    objs = scene.objects
    present = {(o.color, o.shape) for o in objs}
    colors, shapes = {o.color for o in objs}, {o.shape for o in objs}
    hard = False
    if qtype == "existence":
        if answer:
            o = rng.choice(objs)
            color, shape = o.color, o.shape
        else:
            combos = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            hard_combos = [(c, s) for c, s in combos if c in colors and s in shapes]
            # Half the negatives are hard (both attributes are in the image, not together).
            hard = bool(hard_combos) and rng.random() < 0.5
            color, shape = rng.choice(hard_combos if hard else combos)
        q = f"Is there a {color} {shape} in the image?"
        seen = listing(sorted({o.category for o in objs if o.color == color})) or "none"
    elif qtype in ("color", "shape"):
        cands = [(o, refer(scene, o)) for o in objs]
        if qtype == "color":
            cands = [(o, r) for o, r in cands if r and o.color not in r]
        else:
            cands = [(o, r) for o, r in cands if r and o.shape not in r]
        if not cands:
            return None
        o, ref = rng.choice(cands)
        truth, pool, in_image = (
            (o.color, list(COLORS), colors) if qtype == "color" else (o.shape, SHAPES, shapes)
        )
        if answer:
            value = truth
        else:
            others = [v for v in pool if v != truth]
            hard_others = [v for v in others if v in in_image]
            hard = bool(hard_others) and rng.random() < 0.5
            value = rng.choice(hard_others if hard else others)
        q = f"Is the {ref} {value}?" if qtype == "color" else f"Is the {ref} a {value}?"
        seen = truth
    elif qtype == "count":
        # A "no" asks a count as a "yes" would, so the number asked does not give the answer away:
        # of objects any other count from one to four (a "yes" asks each about as often); of one
        # shape the count of another shape in the image (a "yes" asks "no circles" often, "four
        # circles" rarely), so "Are there no circles?" is asked with both answers; never "exactly
        # five", which only a "no" asked.
        shape = None
        if rng.random() < 0.5:
            noun_of, counted, lo = (lambda k: "objects" if k != 1 else "object"), reading_order(scene), 1
        else:
            shape = rng.choice(SHAPES)
            noun_of, lo = (lambda k, s=shape: plural(s) if k != 1 else s), 0
            counted = [o for o in reading_order(scene) if o.shape == shape]
        n = len(counted)
        others = [v for s in SHAPES if shape and s != shape and (v := sum(o.shape == s for o in objs)) != n]
        if answer:
            k = n
        else:
            near = [v for v in (n - 1, n + 1) if lo <= v <= max(4, n)]
            hard = rng.random() < 0.5
            k = rng.choice(near if hard else others or [v for v in range(lo, 5) if v != n])
        if k == 0:
            q = f"Are there no {noun_of(k)} in the image?"
        elif k == 1:
            q = f"Is there exactly one {noun_of(k)} in the image?"
        else:
            q = f"Are there exactly {number_word(k)} {noun_of(k)} in the image?"
        # the objects counted, in reading order, then their number, then the number asked: "red
        # circle, blue circle: two, asked three, so no"; the warm-up teaches the list
        # (``presence``), the count is then the list's
        seen = f"{listing([o.category for o in counted])}: {number_word(n)}" if n else "none"
        seen = asked(seen, number_word(k) if k else "none")
    elif qtype == "position":
        pairs = _pairs(scene)
        if not pairs:
            return None
        a, b, ra, rb, rel = rng.choice(pairs)
        hard = not answer
        q = f"Is the {ra} {REL_PHRASE[rel if answer else OPPOSITE[rel]]} the {rb}?"
        seen = asked(f"{cells_seen(a, b, AXIS[rel])}: {rel}", rel if answer else OPPOSITE[rel])
        return QA(
            q + SEEN_SUFFIX, "Yes" if answer else "No", qtype, "yesno", hard=hard, axis=AXIS[rel], seen=seen
        )
    else:
        raise ValueError(qtype)
    return QA(q + SEEN_SUFFIX, "Yes" if answer else "No", qtype, "yesno", hard=hard, seen=seen)


def _attribute_pool(attribute: str) -> list[str]:
    if attribute not in ("color", "shape"):
        raise ValueError(f"attribute must be 'color' or 'shape', not {attribute!r}")
    return list(COLORS) if attribute == "color" else list(SHAPES)


def reading_order(scene: Scene) -> list[Obj]:
    """The scene's objects row by row (the ``GRID`` rows of cells, by centre: ``cell_of``), left to
    right within a row: the order of the image tokens that show them."""
    return sorted(scene.objects, key=lambda o: (cell_of(o)[0], o.x))


def listing(items: list[str]) -> str:
    """The objects a yes/no reply names, joined by commas alone ("purple triangle, blue circle, green
    square"), so that after each one the LLM only decides whether another object follows. Joined
    as English joins them ("... blue circle and green square") it must know at the comma before
    the last one that one is left: the warm-up's model then wrote one object or three, never two
    or four (docs/demo-history.md)."""
    return ", ".join(items)


def presence(scene: Scene, rng: random.Random, answer: bool, attribute: str) -> QA | None:
    """'Is there a red object in the image?' (``attribute`` "color") or 'Is there a circle in the
    image?' ("shape"): one attribute, no binding, the easiest question an image can answer (the
    demo's perception warm-up, ``graft.world.perception``). The reply lists every object in
    reading order (``listing``) before the verdict ("purple triangle, blue circle, green square,
    so no"), so the warm-up teaches the LLM to read each object's colour and shape from its
    tokens, not the colours alone. Family ``existence``; None when the scene has every value (no negative) of
    that attribute."""
    pool = _attribute_pool(attribute)
    have = {getattr(o, attribute) for o in scene.objects}
    values = sorted(have) if answer else [v for v in pool if v not in have]
    if not values:
        return None
    value = rng.choice(values)
    q = (
        f"Is there a {value} object in the image?"
        if attribute == "color"
        else f"Is there a {value} in the image?"
    )
    verdict = "Yes" if answer else "No"
    seen = listing([o.category for o in reading_order(scene)])
    return QA(q + SEEN_SUFFIX, verdict, "existence", "yesno", seen=seen)


def presence_choice(scene: Scene, rng: random.Random, attribute: str) -> QA | None:
    """'Which of these colors is in the image?' with one value the scene has and three it has
    not: ``presence``'s question in letter-answer form, which teaches the letter format on a
    question the image alone decides. None when the scene leaves fewer than three values out."""
    pool = _attribute_pool(attribute)
    seen = sorted({getattr(o, attribute) for o in scene.objects})
    absent = [v for v in pool if v not in seen]
    if len(absent) < 3:
        return None
    noun = "colors" if attribute == "color" else "shapes"
    return _mcq(rng, f"Which of these {noun} is in the image?", rng.choice(seen), absent, "existence")


# ---------------------------------------------------------------- multiple choice


def _mcq(rng: random.Random, stem: str, correct: str, distractors: list[str], qtype: str) -> QA:
    options = rng.sample(distractors, 3)
    pos = rng.randrange(4)  # uniform answer position
    options.insert(pos, correct)
    body = "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))
    return QA(f"{stem}\n{body}{NAMED_SUFFIX}", LETTERS[pos], qtype, "mcq", choices=options)


def mcq(scene: Scene, rng: random.Random, qtype: str) -> QA | None:
    objs = scene.objects
    if qtype == "existence":
        present = {o.category for o in objs}
        absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
        colors, shapes = {o.color for o in objs}, {o.shape for o in objs}
        # Prefer recombinations of what is in the image: only binding tells them apart.
        hard = [a for a in absent if a.split()[0] in colors and a.split()[1] in shapes]
        pool = hard if len(hard) >= 3 else absent
        return _mcq(rng, "Which of these objects is in the image?", rng.choice(sorted(present)), pool, qtype)
    if qtype == "color":
        cands = [(o, r) for o in objs if (r := refer(scene, o)) and o.color not in r]
        if not cands:
            return None
        o, ref = rng.choice(cands)
        others = [c for c in COLORS if c != o.color]
        return _mcq(rng, f"What color is the {ref}?", o.color, others, qtype)
    if qtype == "shape":
        cands = [(o, r) for o in objs if (r := refer(scene, o)) and o.shape not in r]
        if not cands:
            return None
        o, ref = rng.choice(cands)
        return _mcq(rng, f"What shape is the {ref}?", o.shape, [s for s in SHAPES if s != o.shape], qtype)
    if qtype == "count":
        if rng.random() < 0.5:
            stem, n = "How many objects are there in the image?", len(objs)
            pool = [str(v) for v in range(1, 7) if v != n]
        else:
            shape = rng.choice(sorted({o.shape for o in objs}))
            stem, n = f"How many {plural(shape)} are there in the image?", sum(o.shape == shape for o in objs)
            pool = [str(v) for v in range(0, 6) if v != n]
        return _mcq(rng, stem, str(n), pool, qtype)
    if qtype == "position":
        pairs = _pairs(scene, only=True)
        if not pairs:
            return None
        a, b, ra, rb, rel = rng.choice(pairs)
        opts = [REL_PHRASE[r] + f" the {rb}" for r in ("left", "right", "above", "below")]
        correct = REL_PHRASE[rel] + f" the {rb}"
        qa = _mcq(rng, f"Where is the {ra}?", correct, [o for o in opts if o != correct], qtype)
        qa.axis, qa.seen = AXIS[rel], cells_apart(a, b)
        return qa
    raise ValueError(qtype)


# ---------------------------------------------------------------- short answer


def short(scene: Scene, rng: random.Random, qtype: str) -> QA | None:
    objs = scene.objects
    if qtype == "count":
        if rng.random() < 0.5:
            q, a = "How many objects are there in the image?", len(objs)
        else:
            shape = rng.choice(SHAPES)
            q, a = f"How many {plural(shape)} are there in the image?", sum(o.shape == shape for o in objs)
        return QA(q + SHORT_SUFFIX, str(a), qtype, "short")
    if qtype in ("color", "shape"):
        attr = (lambda o: o.color) if qtype == "color" else (lambda o: o.shape)
        cands = [(o, r) for o in objs if (r := refer(scene, o)) and attr(o) not in r]
        if not cands:
            return None
        o, ref = rng.choice(cands)
        return QA(f"What {qtype} is the {ref}?" + SHORT_SUFFIX, attr(o), qtype, "short")
    if qtype == "existence":
        counts = Counter(o.color for o in objs)
        color = rng.choice(sorted(counts))
        kinds = sorted({o.shape for o in objs if o.color == color})
        q = f"Which shape{'s are' if len(kinds) > 1 else ' is'} {color} in the image?"
        return QA(q + SHORT_SUFFIX, " and ".join(kinds), qtype, "short")
    if qtype == "position":
        pairs = [p for p in _pairs(scene) if p[4] in ("left", "right")]
        if not pairs:
            return None
        _, _, ra, rb, rel = rng.choice(pairs)
        q = f"Is the {ra} to the left or to the right of the {rb}?"
        return QA(q + SHORT_SUFFIX, rel, qtype, "short", axis="x")
    raise ValueError(qtype)


def sample_qa(scene: Scene, rng: random.Random, fmt: str, answer: bool | None = None) -> QA:
    """A question of format `fmt`, family drawn uniformly among those the scene supports."""
    families = list(FAMILIES)
    rng.shuffle(families)
    for qtype in families:
        if fmt == "yesno":
            qa = yesno(scene, rng, rng.random() < 0.5 if answer is None else answer, qtype)
        elif fmt == "mcq":
            qa = mcq(scene, rng, qtype)
        else:
            qa = short(scene, rng, qtype)
        if qa is not None:
            return qa
    raise AssertionError("existence and count questions always exist")
