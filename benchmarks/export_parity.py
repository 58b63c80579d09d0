"""Does the exported model answer as graft does? Export, reload in plain transformers, compare.

Exports a graft model (``graft export-hf``: LLaVA, Aya Vision, or Aya Vision with graft's cell
adapter as code the folder carries), loads the folder with nothing but transformers' Auto classes
(``AutoModelForImageTextToText``, ``AutoProcessor``, the processor's own ``apply_chat_template``;
``trust_remote_code=True`` for the code a cell export carries), answers the same questions
greedily with both, and prints one JSON line: questions, answers that agree word for word, the
first disagreements, and each side's seconds.

    python benchmarks/export_parity.py --model runs/demo/stage2 \\
        --questions runs/demo/heldout/binary/questions.jsonl --limit 100

``--questions`` is a graft questions file (``{"id", "images", "question"}`` rows, the
question's ``<image>`` markers before its text).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from graft.export import export_hf
from graft.generate import generate_answers
from graft.inference import load_for_inference
from graft.record_files import iter_jsonl
from graft.templates import Message


def _questions(path: Path, limit: int) -> list[tuple[str, list[Image.Image]]]:
    rows = []
    for row, _ in iter_jsonl(path):
        images = [Image.open(p).convert("RGB") for p in row["images"]]
        if row["question"].count("<image>") != len(images) or not row["question"].startswith("<image>"):
            raise SystemExit(f"{path}: {row['id']}: this script puts the images first, as the question must")
        rows.append((row["question"], images))
        if len(rows) == limit:
            break
    return rows


def _transformers_answers(folder: Path, rows: list, max_new_tokens: int, dtype: torch.dtype) -> list[str]:
    # trust_remote_code: a cell connector's export carries its code (graft's own, just written)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    answers = []
    for question, images in rows:
        text = question.replace("<image>\n", "").replace("<image>", "")
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        inputs = processor(text=prompt, images=images, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a graft model folder")
    parser.add_argument("--questions", type=Path, required=True, help="a graft questions JSONL file")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="both sides in bfloat16 (default float32)")
    args = parser.parse_args()

    rows = _questions(args.questions, args.limit)
    start = time.perf_counter()
    model, processor = load_for_inference(args.model, bf16=args.bf16)
    conversations = [[Message("user", q)] for q, _ in rows]
    ours = generate_answers(
        model,
        processor,
        conversations,
        [imgs for _, imgs in rows],
        max_new_tokens=args.max_new_tokens,
        batch_size=1,
    )
    graft_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_hf(args.model, Path(tmp) / "export")
        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
        start = time.perf_counter()
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        theirs = _transformers_answers(folder, rows, args.max_new_tokens, dtype)
        transformers_s = time.perf_counter() - start
    differ = [
        {"question": q, "graft": a, "transformers": b}
        for (q, _), a, b in zip(rows, ours, theirs, strict=True)
        if a != b
    ]
    print(
        json.dumps(
            {
                "architecture": architecture,
                "questions": len(rows),
                "same_answers": len(rows) - len(differ),
                "first_differences": differ[:5],
                "graft_s": round(graft_s, 1),
                "transformers_s": round(transformers_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
