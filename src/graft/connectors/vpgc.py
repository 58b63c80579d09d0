"""Cheetah's VPG-C (``vpgc``): a Q-Former VPG that looks at the images a second time, guided by
the LLM's own reading of the instruction.

For an LLM of L decoder layers:

1. first pass, as the plain VPG: ``V_j = proj(QFormer(Q0, X_j))`` for every image j, spliced
   into the prompt by the model;
2. at the input of layer ``guidance_layer`` (default L // 2), ``h`` = the raw residual-stream
   hidden state of each sample's last instruction token (the token just before the answer);
3. ``g = W_g h`` (Linear d_llm -> d_q, zero-initialised), queries ``Q' = g + Q_new``
   (``Q_new`` trainable, initialised from the Q-Former's queries);
4. for every image j of sample b: ``Vbar_j = QFormer(Q'_b, X_j)`` (the frozen Q-Former again)
   and ``hidden[image j's positions] += W_o Vbar_j`` (Linear d_q -> d_llm, zero-initialised);
5. layers ``guidance_layer`` .. L-1 run on the modified states.

Step 2-4 is a forward pre-hook on the LLM's decoder layer list (no forked modeling file). It
acts only while the model arms it (``guiding``), which the model does for a forward that
carries images: the prefill. The KV cache carries the effect to later tokens. Both
projections start at zero, so at step 0 the model computes exactly what the base VPG does.

Options: ``vpg`` (the Q-Former connector spec, ``{"name": "qformer" | "qformer_instruct",
...}``) and ``guidance_layer`` (0-based; default L // 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from graft.connectors import qformer  # noqa: F401  (registers the Q-Former VPGs)
from graft.connectors.base import Connector
from graft.connectors.registry import build_connector, register_connector

QFORMER_VPGS = ("qformer", "qformer_instruct")


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of any transformers decoder LLM (``model.layers``,
    ``get_decoder().layers``, GPT-2's ``transformer.h`` ...)."""
    holders: list[Any] = []
    get_decoder = getattr(language_model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            holders.append(get_decoder())
    holders += [getattr(language_model, "model", None), getattr(language_model, "transformer", None)]
    holders.append(language_model)
    for holder in holders:
        for name in ("layers", "h"):
            layers = getattr(holder, name, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    raise ValueError(
        f"connector 'vpgc' needs a decoder LLM with a list of layers (model.layers or "
        f"get_decoder().layers); {type(language_model).__name__} has none"
    )


@dataclass
class GuidanceContext:
    """What one forward's guidance needs; positions index the LLM input of this forward."""

    #: selected vision features of the N images, ``[N, P, d_vis]``
    image_features: torch.Tensor
    #: sample (batch row) of each image, ``[N]``
    image_samples: torch.Tensor
    #: sequence positions of each image's soft tokens, ``[N, M]``
    image_positions: torch.Tensor
    #: position of each sample's last instruction token, ``[B]``
    instruction_positions: torch.Tensor
    #: one instruction row per image, for an instruction-aware Q-Former
    instruction: dict[str, torch.Tensor]


@register_connector("vpgc")
class VPGCConnector(Connector):
    needs_llm_hidden = True

    def __init__(
        self,
        vision_hidden_size: int,
        text_hidden_size: int,
        vpg: dict[str, Any] | str | None = None,
        guidance_layer: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size)
        if options:
            raise ValueError(f"connector 'vpgc' got unknown options: {', '.join(sorted(options))}")
        if vpg is None:
            raise ValueError(
                "connector 'vpgc' guides a Q-Former and none was given: add "
                "vpg: {name: qformer, ...} (or qformer_instruct) to the connector spec"
            )
        spec = {"name": vpg} if isinstance(vpg, str) else dict(vpg)
        if spec.get("name") not in QFORMER_VPGS:
            raise ValueError(
                f"connector 'vpgc' guides a Q-Former's queries; vpg.name={spec.get('name')!r} has none "
                f"(valid: {', '.join(QFORMER_VPGS)})"
            )
        self.vpg = build_connector(spec, vision_hidden_size, text_hidden_size)
        # an instruction-aware Q-Former reads the instruction in both passes
        self.needs_instruction = self.vpg.needs_instruction
        d_q = self.vpg.query_hidden_size
        self.w_g = nn.Linear(text_hidden_size, d_q)
        self.w_o = nn.Linear(d_q, text_hidden_size)
        self.q_new = nn.Parameter(torch.empty_like(self.vpg.query_tokens))
        self.guidance_layer = guidance_layer
        self.layer_index: int | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._context: GuidanceContext | None = None
        self.vpg.requires_grad_(False)
        self.reset_guidance()

    # --- parameters -------------------------------------------------------------------------
    def init_connector_weights(self) -> None:
        """The model's weight initialisation: as ``reset_guidance``, except for tensors that
        ``from_pretrained`` loaded (transformers flags them; they are left alone)."""
        self._reset(init.zeros_, init.copy_)

    def reset_guidance(self) -> None:
        """W_g = W_o = 0 and Q_new = the Q-Former's queries, so the model computes exactly what
        the base VPG does. Call it again after loading Q-Former weights into ``vpg``."""
        self._reset(nn.init.zeros_, lambda tensor, source: tensor.copy_(source))

    def _reset(self, zeros: Any, copy: Any) -> None:
        with torch.no_grad():
            for linear in (self.w_g, self.w_o):
                zeros(linear.weight)
                zeros(linear.bias)
            copy(self.q_new, self.vpg.query_tokens)

    def set_trainable(self, trainable: bool) -> None:
        """Only W_g, W_o and Q_new ever learn; the Q-Former (both passes) stays frozen."""
        self.requires_grad_(False)
        for param in (*self.w_g.parameters(), *self.w_o.parameters(), self.q_new):
            param.requires_grad_(trainable)

    def train(self, mode: bool = True) -> VPGCConnector:
        super().train(mode)
        self.vpg.eval()  # frozen: no dropout, the same features in both passes
        return self

    # --- the first pass: a plain Q-Former VPG ---------------------------------------------------
    def num_tokens(self, num_patches: int) -> int:
        return self.vpg.num_tokens(num_patches)

    def forward(self, image_features: torch.Tensor, **context: Any) -> torch.Tensor:
        return self.vpg(image_features, **context)

    # --- the second pass: a hook on the LLM -------------------------------------------------------
    def attach(self, language_model: nn.Module) -> None:
        layers = decoder_layers(language_model)
        n = len(layers)
        index = n // 2 if self.guidance_layer is None else self.guidance_layer
        if not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(
                f"connector 'vpgc': guidance_layer={index!r} is outside the LLM, which has {n} decoder "
                f"layers (valid: 0..{n - 1}; default {n // 2})"
            )
        if self._hook is not None:
            self._hook.remove()
        self.layer_index = index
        self._hook = layers[index].register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    @contextlib.contextmanager
    def guiding(self, context: GuidanceContext) -> Iterator[None]:
        """Arm the hook for one LLM forward (the model wraps its prefill in this)."""
        if self._hook is None:
            raise RuntimeError("connector 'vpgc' is not attached to an LLM (call attach first)")
        self._context = context
        try:
            yield
        finally:
            self._context = None

    def _pre_hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        context, self._context = self._context, None  # once per armed forward
        if context is None:
            return None
        if args:
            return (self.guide(args[0], context), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.guide(kwargs["hidden_states"], context)}

    def guide(self, hidden: torch.Tensor, context: GuidanceContext) -> torch.Tensor:
        """``hidden`` ``[B, T, d_llm]`` at the guidance layer's input, with each image's residual added."""
        batch, length = hidden.shape[:2]
        positions = context.instruction_positions.to(hidden.device)
        if positions.shape != (batch,) or bool((positions < 0).any() | (positions >= length).any()):
            raise ValueError(
                f"connector 'vpgc': instruction positions {positions.tolist()} do not fit a batch of "
                f"{batch} x {length} tokens"
            )
        dtype = self.w_g.weight.dtype
        h = hidden[torch.arange(batch, device=hidden.device), positions]  # [B, d_llm]
        queries = self.w_g(h.to(dtype)).unsqueeze(1) + self.q_new  # [B, Q, d_q]
        samples = context.image_samples.to(hidden.device)
        vbar = self.vpg.query_outputs(
            context.image_features.to(hidden.device, dtype), queries=queries[samples], **context.instruction
        )
        residual = self.w_o(vbar).to(hidden.dtype)  # [N, Q, d_llm]
        image_positions = context.image_positions.to(hidden.device)
        if residual.shape[:2] != image_positions.shape:
            raise ValueError(
                f"connector 'vpgc': {residual.shape[1]} residual tokens per image but image blocks of "
                f"{image_positions.shape[1]} positions"
            )
        rows = samples.unsqueeze(1).expand_as(image_positions)
        # out of place: the hidden state before the hook stays in the autograd graph unchanged
        return hidden.index_put(
            (rows.reshape(-1), image_positions.reshape(-1)),
            residual.reshape(-1, hidden.shape[-1]),
            accumulate=True,
        )
