"""Pretrain a tiny Llama on the world's text corpus, saved with its tokenizer like a hub checkpoint."""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from .artifacts import building, is_finished
from .corpus import DOC_SEP


@dataclass
class LLMArgs:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 512
    max_len: int = 320  # longer documents are left out (never cut)
    # Small batches, many steps: on 2 CPU cores throughput is flat in batch size, and the QA
    # skill needs optimizer steps more than it needs tokens per step. ~220 ms/step on one core.
    batch_tokens: int = 1536
    steps: int = 1800
    lr: float = 3e-3
    warmup: int = 100
    # Answers (end of turn included) are about one token in twelve of the drill corpus; the weight
    # keeps their gradient from drowning in caption modelling. (Measured on a 10k world: at 1800
    # steps of ~1536 tokens the QA skill has still not appeared, neither at 8 nor packed at 8.)
    answer_weight: float = 8.0
    seed: int = 0


def _answer_mask(ids: list[int], marker: list[int], eos: int) -> list[bool]:
    """True on tokens after each ' ASSISTANT:' marker up to and including the next eos."""
    mask, on, m = [False] * len(ids), False, len(marker)
    for i, t in enumerate(ids):
        if on:
            mask[i] = True
            on = t != eos
        elif ids[i - m + 1 : i + 1] == marker:
            on = True
    return mask


def _batches(
    world_dir: Path, tok, batch_tokens: int, max_len: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Documents one per row, grouped by length into batches of about `batch_tokens` tokens.

    Not packed: in a packed row a question can find its words in an earlier document's context,
    and the model must first learn to ignore that before it can learn to look; grouping by
    length keeps padding small instead. A document is never cut. Each batch is (ids, kinds):
    kind 0 on padding, 1 on text, 2 on assistant answers (end of turn included).
    """
    docs = (world_dir / "text" / "llm_corpus.txt").read_text(encoding="utf-8").strip().split(DOC_SEP)
    marker = tok(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    seqs = []
    for doc_ids in tok(docs)["input_ids"]:  # <s> added by the tokenizer
        if doc_ids[-1] != eos:
            doc_ids = doc_ids + [eos]
        if len(doc_ids) <= max_len:
            seqs.append(doc_ids)
    seqs.sort(key=len)
    batches, i = [], 0
    while i < len(seqs):
        rows = max(1, batch_tokens // len(seqs[min(i + 1, len(seqs) - 1)]))
        # Rows sorted by length: the batch is as long as its last row.
        while rows > 1 and rows * len(seqs[min(i + rows, len(seqs)) - 1]) > batch_tokens:
            rows -= 1
        chunk = seqs[i : i + rows]
        i += rows
        width = len(chunk[-1])
        ids = torch.full((len(chunk), width), pad)
        kinds = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s)
            kinds[r, : len(s)] = torch.tensor([2 if a else 1 for a in _answer_mask(s, marker, eos)])
        batches.append((ids, kinds))
    return batches


def pretrain_llm(
    world_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    args: LLMArgs | None = None,
    device: str = "cpu",
    **overrides,
) -> Path:
    """Train a tiny LlamaForCausalLM on text/llm_corpus.txt; save model + tokenizer to `out_dir`.

    Skips when `out_dir` already holds a finished model. `overrides` set LLMArgs fields (steps=...).
    """
    out = Path(out_dir)
    if is_finished(out):
        return out
    args = args or LLMArgs()
    for k, v in overrides.items():
        setattr(args, k, v)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    batches = _batches(Path(world_dir), tok, args.batch_tokens, args.max_len)

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, cosine to 10%
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    model.train()
    bar = tqdm(range(args.steps), desc="pretrain llm", unit="step")
    for _ in bar:
        if not order:
            order = list(range(len(batches)))
            rng.shuffle(order)
        x, kind = (t.to(device) for t in batches[order.pop()])
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none"
        )
        k = kind[:, 1:].reshape(-1)
        weight = torch.where(k == 2, args.answer_weight, (k == 1).float())
        loss = (nll * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    model.eval()
    info = {"kind": "llm", "params": sum(p.numel() for p in model.parameters()), "args": asdict(args)}
    with building(out, info) as tmp:
        model.to("cpu").save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out
