"""COCO captions: an annotation JSON (``captions_val2014.json`` or a Karpathy-split test file).

``{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption"}]}``. One
sample per image, id = the image id, target = the list of its reference captions.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.eval.readers.base import (
    IMAGE_MARKER,
    Collector,
    ReadResult,
    Sample,
    existing_image,
    need,
)
from graft.record_files import RecordError, iter_objects, load_json

DEFAULT_PROMPT = "Provide a one-sentence caption for the provided image."


def read_coco_captions(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    prompt: str = DEFAULT_PROMPT,
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
    if image_root is None:
        image_root = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    image_root = Path(image_root)

    captions: dict[int | str, list[str]] = {}
    out = Collector(skip_bad)
    for ann, where in iter_objects(annotations, f"{path}: annotations", out.skip):
        try:
            image_id = need(ann, "image_id", (int, str), where)
            caption = need(ann, "caption", str, where)
        except RecordError as err:
            out.fail(str(err))
            continue
        captions.setdefault(image_id, []).append(caption)

    for img, where in iter_objects(images, f"{path}: images", out.skip):
        try:
            image_id = need(img, "id", (int, str), where)
            file_name = need(img, "file_name", str, where)
            where = f"{where} (id {image_id})"
            if image_id not in captions:
                continue  # an image without captions has nothing to score against
            image = existing_image(image_root / file_name, where, check_images)
        except RecordError as err:
            out.fail(str(err))
            continue
        meta = {"file_name": file_name}
        out.add(Sample(image_id, f"{IMAGE_MARKER}\n{prompt}", [image], captions.pop(image_id), meta, where))
    for image_id in captions:
        out.fail(f"{path}: annotations name image_id {image_id!r}, which is not in 'images'")
    return out.result
