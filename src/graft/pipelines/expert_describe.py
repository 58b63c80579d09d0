"""The expert of the expert pipeline: image -> text, cached per image.

Three kinds, named by a spec string:

- ``model:DIR`` — a graft model folder prompted to caption (greedy, ``caption_prompt``);
- ``oracle:WORLD`` — a shapes world's exact symbolic description of the scene an image shows
  (what a perfect expert would say): the image is found in ``WORLD/meta/{train,val,test}.jsonl``
  by its content (benchmark folders hard-link or copy the world's images); a render no row names
  (DEMON's edited scenes) is read back from its pixels (``graft.world.read_scene``);
- ``jsonl:FILE`` — a user's descriptions, one ``{"image": PATH, "description": TEXT}`` a line
  (paths relative to the file's folder), matched by path, else by content, else by file name.

``DescriptionCache`` keeps every description once per (image content hash, describer id) in an
append-only JSONL; a rerun reuses them, and a half-written last line is dropped. Each row also
keeps what the description cost (seconds, tokens), so a rerun still reports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from graft.files import cut_partial_last_line
from graft.record_files import RecordError, iter_jsonl

logger = logging.getLogger(__name__)
KINDS = ("model", "oracle", "jsonl")


class DescriberError(ValueError):
    """An image the describer cannot describe (not in the world, not in the user's file)."""


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: an image's identity whatever its name or folder."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Description:
    text: str
    seconds: float = 0.0
    #: tokens the describer read (prompt with image tokens) and wrote; 0 for oracle and jsonl
    prompt_tokens: int = 0
    answer_tokens: int = 0


class Describer(Protocol):
    #: names the describer in the cache key and in results ("model:<weights>:<prompt hash>")
    id: str

    def describe(self, images: Sequence[Path]) -> list[Description]: ...


def parse_spec(spec: str) -> tuple[str, Path]:
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in KINDS or not arg:
        raise ValueError(f"describer {spec!r}: expected model:DIR, oracle:WORLD or jsonl:FILE")
    return kind, Path(arg).expanduser()


class ModelDescriber:
    """A graft model asked ``prompt`` about each image, in batches."""

    def __init__(
        self, model: Any, processor: Any, prompt: str, max_new_tokens: int = 128, batch_size: int = 8
    ) -> None:
        from graft.eval.runner import weights_fingerprint

        self.model, self.processor, self.prompt = model, processor, prompt
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        asked = hashlib.sha256(f"{prompt}\0{max_new_tokens}".encode()).hexdigest()[:8]
        self.id = f"model:{weights_fingerprint(model)}:{asked}"

    def describe(self, images: Sequence[Path]) -> list[Description]:
        from graft.generate import generate_answers
        from graft.processing import load_image
        from graft.templates import Message

        proc, out = self.processor, []
        text = f"{proc.image_token}\n{self.prompt}"
        prompt_tokens = len(proc.tokenizer(self.prompt)["input_ids"]) + proc.image_seq_length
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            began = time.perf_counter()
            answers = generate_answers(
                self.model,
                proc,
                [[Message("user", text)] for _ in chunk],
                [[load_image(p)] for p in chunk],
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
            )
            each = (time.perf_counter() - began) / len(chunk)
            out += [Description(a, each, prompt_tokens, len(proc.tokenizer(a)["input_ids"])) for a in answers]
        return out


def oracle_text(scene: dict) -> str:
    """A shapes scene in words: the count, every object's size, colour, shape and place, and its
    box, exactly (the world's own ``detailed_description`` and boxes, in a fixed order)."""
    from graft.world.describe import box_lines, detailed_description
    from graft.world.scene import Scene

    parsed = Scene.from_dict(scene)
    boxes = "; ".join(box_lines(parsed))
    return f"{detailed_description(parsed, random.Random(0))} Boxes (x1, y1, x2, y2 from 0 to 1): {boxes}."


class OracleDescriber:
    """A shapes world's exact description of the scene an image shows."""

    def __init__(self, world: Path) -> None:
        self.world = Path(world)
        info = self.world / "world.json"
        if not (self.world / "meta").is_dir():
            raise FileNotFoundError(f"{self.world}: no meta/ folder: is it a shapes world (graft world)?")
        version = json.loads(info.read_text(encoding="utf-8")).get("version", "") if info.is_file() else ""
        self.id = f"oracle:{version or 'shapes'}"
        self._scenes: dict[str, dict] | None = None

    def _index(self) -> dict[str, dict]:
        """Image content hash -> scene, over every split (built once, on first use)."""
        if self._scenes is None:
            self._scenes = {}
            for split in ("train", "val", "test"):
                meta = self.world / "meta" / f"{split}.jsonl"
                if not meta.is_file():
                    continue
                for row, _ in iter_jsonl(meta):
                    path = self.world / row["image"]
                    if path.is_file():
                        self._scenes[file_hash(path)] = row["scene"]
        return self._scenes

    def describe(self, images: Sequence[Path]) -> list[Description]:
        from graft.processing import load_image
        from graft.world.read_scene import scene_from_render

        out = []
        for p in images:
            scene = self._index().get(file_hash(p))
            if scene is None:  # a render no metadata row names (DEMON's edits): read its pixels
                read = scene_from_render(load_image(p))
                if read is None:
                    raise DescriberError(
                        f"{p}: not an image of the shapes world {self.world} (no scene for it)"
                    )
                scene = read.to_dict()
            out.append(Description(oracle_text(scene)))
        return out


class JsonlDescriber:
    """A user's descriptions: ``{"image", "description"}`` rows."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.by_path: dict[str, str] = {}
        self.by_name: dict[str, list[str]] = {}
        self.by_hash: dict[str, str] = {}
        for row, where in iter_jsonl(self.path):
            image, text = row.get("image"), row.get("description")
            if not isinstance(image, str) or not isinstance(text, str):
                raise RecordError(f"{where}: expected {{'image': PATH, 'description': TEXT}}")
            full = (self.path.parent / image).resolve()
            self.by_path[str(full)] = text
            self.by_name.setdefault(full.name, []).append(text)
            if full.is_file():
                self.by_hash.setdefault(file_hash(full), text)
        self.id = f"jsonl:{file_hash(self.path)[:16]}"

    def describe(self, images: Sequence[Path]) -> list[Description]:
        out = []
        for p in images:
            text = self.by_path.get(str(Path(p).resolve())) or self.by_hash.get(file_hash(p))
            if text is None and len(self.by_name.get(Path(p).name, [])) == 1:
                text = self.by_name[Path(p).name][0]
            if text is None:
                raise DescriberError(f"{p}: no description for this image in {self.path}")
            out.append(Description(text))
        return out


class DescriptionCache:
    """(image hash, describer id) -> description, in an append-only JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[tuple[str, str], Description] = {}
        if self.path.exists():
            for lineno, line in enumerate(cut_partial_last_line(self.path).splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = (row["image_sha256"], row["describer"])
                    self.rows[key] = Description(
                        row["description"],
                        row.get("seconds", 0.0),
                        row.get("prompt_tokens", 0),
                        row.get("answer_tokens", 0),
                    )
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise RecordError(
                        f"{self.path}:{lineno}: the description cache is corrupt; move it away to restart"
                    ) from None

    def describe(self, describer: Describer, images: Sequence[Path]) -> list[Description]:
        """Every image's description, in order: from the cache, else from ``describer`` (all the
        missing ones at once, then appended and synced before they are returned)."""
        keys = [(file_hash(p), describer.id) for p in images]
        missing: dict[tuple[str, str], Path] = {}
        for key, p in zip(keys, images, strict=True):
            if key not in self.rows and key not in missing:
                missing[key] = p
        if missing:
            fresh = describer.describe(list(missing.values()))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                for (sha, who), p, d in zip(missing, missing.values(), fresh, strict=True):
                    row = {"image_sha256": sha, "describer": who, "image": str(p), "description": d.text}
                    row |= {"seconds": round(d.seconds, 4)} if d.seconds else {}
                    row |= {"prompt_tokens": d.prompt_tokens, "answer_tokens": d.answer_tokens}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    self.rows[(sha, who)] = d
                f.flush()
                os.fsync(f.fileno())
        return [self.rows[k] for k in keys]
