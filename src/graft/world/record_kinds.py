"""The kinds of the world's stage-2 records (each record's ``qtype``), and a records file cut
down to some of them: ``graft demo --stage2-kinds`` trains stage 2 on those alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the kinds (``qtype``) of the world's stage-2 records (``instructions``, ``multi_image``)
STAGE2_KINDS = ("questions", "conversation", "reasoning", "detail", "which_image", "difference", "caption")
#: every kind: the whole records file
ALL_KINDS = "all"
#: the demo's stage-2 mix with two tokens per image cell: the short-answer question records and
#: the conversations that keep its chat in sentences (README: What the demo measures today)
TWO_TOKEN_KINDS = "questions,conversation"


def check_stage2_kinds(kinds: str) -> set[str]:
    """The kinds named in ``kinds`` (comma-separated; ``ALL_KINDS``: every one), or a ValueError
    naming one that is none of ``STAGE2_KINDS``."""
    if kinds.strip() == ALL_KINDS:
        return set(STAGE2_KINDS)
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    unknown = sorted(wanted - set(STAGE2_KINDS))
    if not wanted or unknown:
        named = ", ".join(unknown) or repr(kinds)
        raise ValueError(
            f"stage-2 record kinds {named}: give one or more of {', '.join(STAGE2_KINDS)}, or {ALL_KINDS}"
        )
    return wanted


def records_of_kinds(path: Path, kinds: str) -> list[dict[str, Any]]:
    """The records of a records file whose ``qtype`` is one of ``kinds`` (comma-separated; every
    record for ``ALL_KINDS``); a ValueError names a kind the file has no record of, and the kinds it
    has."""
    wanted = check_stage2_kinds(kinds)
    records = json.loads(path.read_text())
    if kinds.strip() == ALL_KINDS:
        return records
    present = {r.get("qtype") for r in records}
    if wanted - present:
        known = ", ".join(sorted(str(k) for k in present))
        raise ValueError(f"{path}: no records of kind {', '.join(sorted(wanted - present))}; it has {known}")
    return [r for r in records if r.get("qtype") in wanted]
