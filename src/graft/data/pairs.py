"""Synthetic discriminative pairs (Cheetah): an image, its edit, and one sentence on what changed.

For each source image with object regions: score each object by how much the VPG's Q-Former
looks at it (cross-attention averaged over layers, heads and queries, then over the object's
patches), pick one of the least-attended objects, apply one edit to it — modify, swap, delete
or add — and write a LLaVA-format sample: both images, an instruction from a pool of
paraphrases of "Describe the difference between the images", and the editor's one-sentence
description of the edit as the answer. Training on such pairs teaches VPG-C to look for the
details the Q-Former's first pass missed. An editor that knows exactly what each image shows
also records the labels one image shows and the other does not (``edit.only_in``), from which a
"which image shows ..." question can be asked (``graft.world.multi_image.pair_which_record``).

Editors are pluggable (``Editor``): the shapes world re-renders its scene exactly
(``graft.world.edits``), real photos get OpenCV edits (``graft.data.photo_edit``), and a
diffusion inpainter would be one more class. Without a Q-Former, attention is unavailable and
objects are chosen at random; the run says so and records it per sample.

Output (``make_pairs``): ``out/images/{id}_a.*`` (the source) and ``{id}_b.png`` (the edit),
and ``out/pairs.jsonl`` appended and flushed per pair, so a rerun skips finished sources.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from tqdm.auto import tqdm

from graft.files import cut_partial_last_line
from graft.record_files import RecordError, iter_jsonl

logger = logging.getLogger(__name__)

EDIT_KINDS = ("modify", "swap", "delete", "add")
INSTRUCTIONS = (
    "Describe the difference between the images.",
    "What is different between the two images?",
    "Tell me what changed from the first image to the second.",
    "Compare the images and describe how they differ.",
    "What has been changed in the second image?",
    "Point out the difference between these two images.",
    "Explain what differs between the first and the second picture.",
    "Spot the difference between the images and describe it.",
)
PAIRS_FILE = "pairs.jsonl"


class PairError(ValueError):
    """A source or an edit that cannot make a valid pair."""


@dataclass(frozen=True)
class Region:
    """One object: a label ("red circle", "flower") and its box ``[x1, y1, x2, y2]`` in 0..1."""

    label: str
    box: tuple[float, float, float, float]


@dataclass
class Source:
    id: str
    #: image path, relative to the image root
    image: str
    regions: list[Region]
    #: editor-specific extras (the shapes world's scene)
    meta: dict[str, Any] = field(default_factory=dict)
    #: where it was read from, for error messages
    where: str = ""


@dataclass
class EditResult:
    image: Image.Image
    #: one sentence: what changed from the first image to the second
    description: str
    #: the labels of what one image shows and the other does not, (the first's, the second's), when
    #: the editor knows them exactly (a recolour: the old colour's label, the new one's): a
    #: "which image shows ..." question can then be asked of the pair
    only_in: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


class Editor(Protocol):
    name: str

    def edit(
        self, image: Image.Image, source: Source, target: int, kind: str, rng: random.Random
    ) -> EditResult | None:
        """Apply ``kind`` to region ``target``; None when that edit does not apply here."""


def position_phrase(box: Sequence[float]) -> str:
    """Coarse place of a box's centre: "in the top left", "on the right", "in the center"."""
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = "left" if x < 0.38 else "right" if x > 0.62 else ""
    row = "top" if y < 0.38 else "bottom" if y > 0.62 else ""
    if row and col:
        return f"in the top {col}" if row == "top" else f"in the bottom {col}"
    return f"at the {row}" if row else f"on the {col}" if col else "in the center"


def read_regions(path: str | os.PathLike) -> list[Source]:
    """Sources from JSONL lines ``{"image", "regions": [{"label", "box": [x1, y1, x2, y2]}], "id"?}``
    with boxes normalised to 0..1; a bad line is an error naming the file, line and field."""
    sources = []
    try:
        rows = list(iter_jsonl(path))
    except RecordError as err:  # a line that is no JSON object, or a missing file
        raise PairError(str(err)) from None
    for raw, where in rows:
        if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
            raise PairError(f"{where}: field 'image' must be a string path")
        regions = []
        for k, region in enumerate(raw.get("regions") or []):
            box = region.get("box") if isinstance(region, dict) else None
            ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise PairError(
                    f"{where}: field regions[{k}].box must be [x1, y1, x2, y2] in 0..1, got {box}"
                )
            regions.append(Region(str(region.get("label", "object")), tuple(float(v) for v in box)))
        sources.append(Source(str(raw.get("id", Path(raw["image"]).stem)), raw["image"], regions, {}, where))
    return sources


class AttentionScorer:
    """Scores each region of an image by the Q-Former's mean cross-attention over its patches."""

    def __init__(self, model: Any, processor: Any) -> None:
        connector = model.connector
        self.qformer = getattr(connector, "vpg", connector)  # VPG-C: its (frozen) Q-Former
        if not hasattr(self.qformer, "cross_attention_map"):
            raise PairError(
                f"connector {connector.name!r} has no Q-Former: attention is unavailable "
                "(make_pairs falls back to random selection without a scorer)"
            )
        self.model, self.processor = model.eval(), processor

    @torch.no_grad()
    def __call__(self, image: Image.Image, regions: Sequence[Region]) -> list[float]:
        # squash to the model's input square, so normalised boxes map straight onto the patch grid
        square = image.convert("RGB").resize(_input_size(self.processor.image_processor), Image.BICUBIC)
        pixels = self.processor.preprocess_images([square]).to(self.model.device)
        features = self.model.select_vision_features(pixels)
        context = {}
        if getattr(self.qformer, "needs_instruction", False):
            ids = self.processor.instruction_tokenizer(INSTRUCTIONS[0], return_tensors="pt")["input_ids"]
            context["instruction_ids"] = ids.to(self.model.device)
        attention = self.qformer.cross_attention_map(features.to(self.qformer.query_tokens.dtype), **context)
        return region_scores(attention[0], regions)


def _input_size(image_processor: Any) -> tuple[int, int]:
    """(width, height) the vision tower sees: the crop when there is one (CLIP), else the resize."""
    size = getattr(image_processor, "crop_size", None) or image_processor.size
    if "height" in size:
        return int(size["width"]), int(size["height"])
    edge = int(size["shortest_edge"])
    return edge, edge


def region_scores(attention: torch.Tensor, regions: Sequence[Region]) -> list[float]:
    """Mean attention over the patches whose centres fall in each box (``attention``: one weight
    per image feature; a leading CLS feature, when the count is a square plus one, is dropped)."""
    n = attention.numel()
    grid = round(n**0.5)
    if grid * grid != n:
        grid = round((n - 1) ** 0.5)
        if grid * grid != n - 1:
            raise PairError(f"{n} image features do not form a square patch grid")
        attention = attention[1:]
    heat = attention.reshape(grid, grid)
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    scores = []
    for region in regions:
        x1, y1, x2, y2 = region.box
        cols = ((centres >= x1) & (centres <= x2)).nonzero().flatten()
        rows = ((centres >= y1) & (centres <= y2)).nonzero().flatten()
        if len(cols) == 0 or len(rows) == 0:  # a box smaller than a patch: the patch at its centre
            cols = torch.tensor([min(int((x1 + x2) / 2 * grid), grid - 1)])
            rows = torch.tensor([min(int((y1 + y2) / 2 * grid), grid - 1)])
        scores.append(float(heat[rows][:, cols].mean()))
    return scores


@dataclass
class PairStats:
    written: int = 0
    reused: int = 0
    #: sources where no edit applied (e.g. no room to add, one object to swap)
    no_edit: int = 0
    kinds: Counter = field(default_factory=Counter)
    selection: str = "attention"

    def summary(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "reused": self.reused,
            "no_edit": self.no_edit,
            "kinds": dict(self.kinds),
            "selection": self.selection,
        }


def _done(path: Path) -> dict[str, str]:
    """Ids already written -> how their edited object was chosen ("attention" or "random"); a line
    cut by a kill is dropped, so its source is redone."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in cut_partial_last_line(path).splitlines() if line.strip()]
    return {r["id"]: r.get("edit", {}).get("selection", "") for r in records}


def _save_atomic(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def make_pairs(
    sources: Iterable[Source],
    editor: Editor,
    image_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    scorer: AttentionScorer | None = None,
    seed: int = 0,
    pick_from: int = 2,
    kinds: Sequence[str] = EDIT_KINDS,
    progress: bool = True,
    paths_relative_to: str | os.PathLike | None = None,
) -> PairStats:
    """Write one pair per source (see the module doc); ``pick_from`` least-attended objects are
    the candidates. Resumable: sources already in ``out_dir/pairs.jsonl`` are skipped.

    Image paths in the records are relative to ``paths_relative_to`` (default ``out_dir``): give
    the image root of the data they will be mixed with, so one ``data.image_root`` serves both."""
    unknown = sorted(set(kinds) - set(EDIT_KINDS))
    if unknown or not kinds:
        raise PairError(f"unknown edit kinds {unknown}; valid: {', '.join(EDIT_KINDS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pairs_path = out / PAIRS_FILE
    done = _done(pairs_path)
    stats = PairStats(selection="attention" if scorer is not None else "random")
    other = sum(how != stats.selection for how in done.values())
    if other:  # a resumed run goes on as it began: its pairs would otherwise be chosen two ways
        raise PairError(
            f"{pairs_path}: {other} of its {len(done)} pairs were not chosen by {stats.selection} (this "
            f"run's way: {'with' if scorer is not None else 'without'} a model's Q-Former attention); "
            "resume as the run began, or give another output folder"
        )
    if scorer is None:
        logger.warning("no Q-Former attention available: objects to edit are chosen at random")
    sources = list(sources)
    with pairs_path.open("a", encoding="utf-8") as sink:
        for source in tqdm(sources, desc=f"pairs ({editor.name})", unit="image", disable=not progress):
            pair_id = f"pair-{source.id}"
            if pair_id in done:
                stats.reused += 1
                continue
            record = _one_pair(source, pair_id, editor, Path(image_root), out, scorer, seed, pick_from, kinds)
            if record is not None and paths_relative_to is not None:
                record["images"] = [os.path.relpath(out / p, paths_relative_to) for p in record["images"]]
            if record is None:
                stats.no_edit += 1
                continue
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            stats.written += 1
            stats.kinds[record["edit"]["kind"]] += 1
    return stats


def _one_pair(
    source: Source,
    pair_id: str,
    editor: Editor,
    image_root: Path,
    out: Path,
    scorer: AttentionScorer | None,
    seed: int,
    pick_from: int,
    kinds: Sequence[str],
) -> dict[str, Any] | None:
    where = source.where or source.image
    if not source.regions:
        raise PairError(f"{where}: image {source.image} has no object regions to edit")
    path = image_root / source.image
    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except (OSError, ValueError) as err:
        raise PairError(f"{where}: cannot read image {path}: {err}") from None
    rng = random.Random(f"{seed}-{source.id}")  # per source: a resumed run makes the same pairs
    scores = scorer(image, source.regions) if scorer is not None else None
    if scores is None:
        target = rng.randrange(len(source.regions))
    else:
        least = sorted(range(len(scores)), key=lambda i: scores[i])[: max(1, pick_from)]
        target = rng.choice(least)
    for kind in rng.sample(list(kinds), len(kinds)):
        result = editor.edit(image, source, target, kind, rng)
        if result is not None:
            break
    else:
        return None
    if result.image.size != image.size:
        raise PairError(
            f"{where}: editor {editor.name!r} returned a {result.image.size} image for a {image.size} "
            "source: both images of a pair must have the same size"
        )
    first = f"images/{source.id}_a{path.suffix or '.png'}"
    second = f"images/{source.id}_b.png"
    if not (out / first).exists():
        tmp = out / (first + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, out / first)
    _save_atomic(result.image, out / second)
    instruction = rng.choice(INSTRUCTIONS)
    return {
        "id": pair_id,
        "images": [first, second],
        "conversations": [
            {"from": "human", "value": f"Image A: <image>\nImage B: <image>\n{instruction}"},
            {"from": "gpt", "value": result.description},
        ],
        "edit": {
            "kind": kind,
            "target": source.regions[target].label,
            "selection": "attention" if scores is not None else "random",
            "scores": [round(s, 6) for s in scores] if scores is not None else None,
            "only_in": [list(result.only_in[0]), list(result.only_in[1])],
        },
    }
