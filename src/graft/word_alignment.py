"""Word alignment: an LLM-free first stage that puts each image's soft tokens on the LLM's words.

LLaVA's stage 1 (captions, LLM frozen, connector learning) makes soft tokens the LLM can caption
from, but a small LLM then cannot *match* them with the words of a question: SmolLM2-135M,
fine-tuned on "Is there a red object in the image?", stays at chance for hundreds of steps
after such a stage 1, and learns the same question in 40 steps when the scene's colours are
written as words (docs/demo-history.md). A question's word and an image's
token must meet in attention, and the LLM's pretrained heads match words with words.

This objective trains the connector without running the LLM. Each soft token, compared with
the LLM's input embeddings by cosine similarity (times ``scale``), gives a distribution over the
vocabulary; the mean of an image's distributions is pulled towards the content words of its
sample's caption (the supervised tokens that ``content_words`` keeps: a bag of words, so no token
is told which word is its own; each finds the one its patches show), and each token is pulled
onto the mixture of embeddings it picks (a squared error relative to a word's size), so
the tokens become words the LLM already reads, not only directions. The connector keeps its
architecture, so the model exports as before.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from graft.config import IGNORE_INDEX

#: cosine similarity -> logit: 30 lets one word take nearly all of a token's mass
SCALE = 30.0
#: English function words: not something an image shows (with digits and punctuation, left out)
FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to from by for with as into onto over under near next is are "
    "was were be been this that these those there here it its image picture photo shows show "
    "showing one two three four five six seven eight nine ten".split()
)


def content_words(tokenizer: Any) -> torch.Tensor:
    """``[vocabulary]`` bools: the token ids that count as an image's words (some letter in them,
    not a function word once stripped and lower-cased, not a special token)."""
    special = set(tokenizer.all_special_ids)
    size = len(tokenizer)
    keep = torch.zeros(size, dtype=torch.bool)
    for i, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        word = tokenizer.convert_tokens_to_string([text]).strip().lower() if text else ""
        keep[i] = i not in special and any(c.isalpha() for c in word) and word not in FUNCTION_WORDS
    return keep


def word_alignment_loss(
    soft_tokens: torch.Tensor,
    image_samples: torch.Tensor,
    labels: torch.Tensor,
    caption_words: torch.Tensor,
    embeddings: torch.Tensor,
    num_items: int | torch.Tensor | None = None,
    scale: float = SCALE,
) -> torch.Tensor:
    """Bag-of-words loss plus on-word loss, summed over samples with images and divided by
    ``num_items`` (default: their count), as transformers divides a causal-LM loss.

    ``soft_tokens`` ``[N, M, d]`` are N images' tokens, ``image_samples`` ``[N]`` each image's
    sample, ``labels`` ``[B, T]`` the batch's labels and ``caption_words`` ``[B, T]`` which of their
    positions hold content words; ``embeddings`` ``[V, d]`` the LLM's input embeddings."""
    table = embeddings.detach().float()
    tokens = soft_tokens.float()
    logits = scale * F.normalize(tokens, dim=-1) @ F.normalize(table, dim=-1).T  # [N, M, V]
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # float: autocast may have run bf16
    mixture = (log_probs.exp() @ table).detach()
    # squared distance to the mixture, relative to a word's mean squared size
    on_word = ((tokens - mixture) ** 2).sum(-1).mean(-1) / (table**2).sum(-1).mean()
    words = [labels[s][caption_words[s] & (labels[s] != IGNORE_INDEX)].unique() for s in range(len(labels))]
    width = max((w.numel() for w in words), default=0)
    if width == 0:
        return tokens.sum() * 0.0
    index = torch.zeros(len(words), width, dtype=torch.long, device=log_probs.device)
    for s, w in enumerate(words):
        index[s, : w.numel()] = w.to(index.device)
    # each image: log of the summed probability, over its tokens, of each word of its sample
    per_image = torch.gather(
        log_probs, 2, index[image_samples][:, None, :].expand(-1, log_probs.shape[1], -1)
    )
    per_image = torch.logsumexp(per_image, dim=1)  # [N, K]
    losses = []
    for sample in image_samples.unique().tolist():
        mine, count = image_samples == sample, words[sample].numel()
        if count == 0:
            continue
        # the log of the mean over every token of the sample's images
        bag = torch.logsumexp(per_image[mine, :count], dim=0) - math.log(int(mine.sum()) * log_probs.shape[1])
        losses.append(-bag.mean() + on_word[mine].mean())
    total = torch.stack(losses).sum() if losses else tokens.sum() * 0.0
    count = num_items if num_items is not None else max(len(losses), 1)
    return total / count
