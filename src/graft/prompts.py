"""Where a prompt's images go: one rule for every prompt graft builds (training records, question
and prediction files, benchmark tasks, chat turns), and the letters that name options.

1. DEMON's placeholders ``{image#k}`` (and ``{table#k}``: tables ship as pictures) become image
   markers, and the images follow the markers' order (one may repeat): the k-th marker shows
   the k-th image of the list a prompt is given with.
2. Otherwise the text's own markers place the images: there must be one per image.
3. A text with no marker at all gets its images first, one ``<image>\\n`` each (LLaVA's layout).
   Training records do not take this step: a record's markers are data, so a missing one is an
   error, never a silently prepended marker.

Every mismatch is an ``ImageMarkerError``, a ``RecordError`` whose message names the place.
"""

from __future__ import annotations

import re
import string

from graft.config import DEFAULT_IMAGE_TOKEN
from graft.record_files import RecordError

#: the letters that name options ("A", "B", ...) in multiple-choice prompts and answers
OPTION_LETTERS = string.ascii_uppercase
#: the one-sentence caption prompt: lmms-eval's COCO caption task asks it, and LLaVA-1.5's
#: instruction mix trains on it (its TextCaps share)
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
#: LLaVA-1.5's response-format prompts, on a line of their own after the question: its
#: instruction mix trains on them, its evaluation files (POPE's ``llava_pope_test.jsonl``,
#: ScienceQA's ``llava_test_CQM-A.json``) ask them, and lmms-eval's tasks add them
SHORT_ANSWER = "Answer the question using a single word or phrase."
MC_ANSWER = "Answer with the option's letter from the given choices directly."

#: DEMON's placeholders: ``{image#k}`` / ``{table#k}`` stand for the k-th image, 1-based
DEMON_PLACEHOLDER = re.compile(r"\{(image|table)#(\d+)\}")


class ImageMarkerError(RecordError):
    """A prompt's image markers (or placeholders) do not match its images."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "image_marker_mismatch")


def has_demon_placeholders(text: str) -> bool:
    return DEMON_PLACEHOLDER.search(text) is not None


def demon_to_markers(
    texts: list[str], num_images: int, image_token: str = DEFAULT_IMAGE_TOKEN, where: str = "text"
) -> tuple[list[str], list[int]]:
    """Replace DEMON placeholders in ``texts`` (the turns of one sample, in order) by
    ``image_token``; return the new texts and, per marker, the index of the image it shows."""
    order: list[int] = []

    def place(match: re.Match) -> str:
        k = int(match.group(2))
        if not 1 <= k <= num_images:
            raise ImageMarkerError(
                f"{where}: {match.group(0)} in the context but the sample has {num_images} image(s)"
            )
        order.append(k - 1)
        return image_token

    converted = [DEMON_PLACEHOLDER.sub(place, text) for text in texts]
    if order and any(image_token in text for text in texts):
        raise ImageMarkerError(f"{where}: mixes {image_token} markers with {{image#k}} placeholders")
    return converted, order


def markers_in_order(
    texts: list[str], num_images: int, where: str, marker: str = DEFAULT_IMAGE_TOKEN
) -> tuple[list[str], list[int]]:
    """Step 1 over the turns of one sample: the texts with placeholders made markers, and per
    image slot the index of the image it shows (``range(num_images)`` without placeholders)."""
    if not any(has_demon_placeholders(t) for t in texts):
        return texts, list(range(num_images))
    return demon_to_markers(texts, num_images, marker, where)


def check_marker_count(
    markers: int, num_images: int, where: str, marker: str, what: str, images_first: bool
) -> None:
    """Step 2: one marker per image, or an ``ImageMarkerError`` naming ``what`` holds them."""
    if markers == num_images:
        return
    if images_first:
        hint = "use one marker per image, or none to put them first"
    else:
        hint = "put one marker where each image goes"
    raise ImageMarkerError(
        f"{where}: {what} holds {markers} {marker} marker(s) but {num_images} image(s); {hint}"
    )


def place_images(
    text: str,
    num_images: int,
    where: str,
    marker: str = DEFAULT_IMAGE_TOKEN,
    pre: str = "",
    post: str = "",
    what: str = "the prompt",
) -> tuple[str, list[int]]:
    """A user turn with one marker per image, and the order of the images in it (indices into
    the images it was given with). ``pre`` goes after the leading images, ``post`` at the end."""
    (text,), order = markers_in_order([text], num_images, where, marker)
    head = re.match(rf"(?:{re.escape(marker)}\s*)*", text).group(0)  # type: ignore[union-attr]
    text = head + pre + text[len(head) :] + post
    markers = text.count(marker)
    if markers == 0:
        return f"{marker}\n" * len(order) + text, order
    check_marker_count(markers, len(order), where, marker, what, images_first=True)
    return text, order
