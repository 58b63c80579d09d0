"""``lexical``: soft tokens that are mixtures of the LLM's own input embeddings.

``swiglu``'s projection (Aya Vision's adapter, layer-normed first where asked) gives a vector per
token; compared by cosine similarity with every input embedding of the LLM (times
``word_scale``), it picks a distribution over the vocabulary, and the soft token is that
distribution's mixture of embeddings. A token can therefore only be (a blend of) words the LLM
already reads, which is what lets a small LLM match an image's tokens with a question's words
(``graft.word_alignment``, which trains it: docs/demo-history.md). The
embedding table is the LLM's, read at every call and never copied: the connector's own weights
are ``swiglu``'s. No transformers architecture has such a projector, so a model with it does not
export (``graft export-hf`` says so).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from graft.connectors.projector import SwiGLUProjector
from graft.connectors.registry import register_connector


@register_connector("lexical")
class LexicalProjector(SwiGLUProjector):
    def __init__(
        self, vision_hidden_size: int, text_hidden_size: int, word_scale: float = 30.0, **options: Any
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, **options)
        self.word_scale = word_scale
        self._words: list[nn.Module] = []  # the LLM's input embeddings, not a sub-module of ours

    def attach(self, language_model: nn.Module) -> None:
        self._words = [language_model.get_input_embeddings()]

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        if not self._words:
            raise RuntimeError("connector 'lexical' reads the LLM's embeddings: attach it to an LLM first")
        query = super().forward(image_features, **context)
        table = self._words[0].weight.to(query.dtype)
        logits = self.word_scale * F.normalize(query, dim=-1) @ F.normalize(table, dim=-1).T
        return torch.softmax(logits.float(), dim=-1).to(query.dtype) @ table
