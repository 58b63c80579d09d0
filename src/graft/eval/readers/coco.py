"""COCO captions: an annotation JSON (``captions_val2014.json`` or a Karpathy-split test file).

``{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption"}]}``. One
sample per image, id = the image id, target = the list of its reference captions.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.eval.readers.base import IMAGE_MARKER, Collector, ReadResult, Sample, image_folder, need
from graft.prompts import CAPTION_PROMPT
from graft.record_files import RecordError, iter_objects, load_json


def read_coco_captions(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    prompt: str = CAPTION_PROMPT,
    skip_bad: bool = False,
    check_images: bool = True,
) -> ReadResult:
    """One sample per image that has at least one caption.

    ``image_root`` defaults to ``images/`` beside the annotation file when that exists, else the
    annotation file's folder.
    """
    path = Path(path)
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise RecordError(f"{path}: expected a COCO annotation object with 'images' and 'annotations'")
    images, annotations = doc.get("images"), doc.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise RecordError(f"{path}: fields 'images' and 'annotations' must be lists")
    image_root = image_folder(path.parent, image_root)
    captions: dict[int | str, list[str]] = {}
    out = Collector(skip_bad, check_images)

    def caption(ann: dict, where: str) -> None:
        image_id, text = need(ann, "image_id", (int, str), where), need(ann, "caption", str, where)
        captions.setdefault(image_id, []).append(text)

    def sample(img: dict, where: str) -> Sample | None:
        image_id = need(img, "id", (int, str), where)
        file_name = need(img, "file_name", str, where)
        where = f"{where} (id {image_id})"
        if image_id not in captions:
            return None  # an image without captions has nothing to score against
        image = out.image(image_root / file_name, where)
        meta = {"file_name": file_name}
        return Sample(image_id, f"{IMAGE_MARKER}\n{prompt}", [image], captions.pop(image_id), meta, where)

    out.collect(iter_objects(annotations, f"{path}: annotations", out.skip), caption)
    out.collect(iter_objects(images, f"{path}: images", out.skip), sample)
    for image_id in captions:
        out.fail(f"{path}: annotations name image_id {image_id!r}, which is not in 'images'")
    return out.result
