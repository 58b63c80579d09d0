"""The model a training stage starts from, and what the stage changes on it: which components
learn, how, and at which rate.

A recipe gives each component (``vision``, ``connector``, ``llm``) a mode: ``frozen`` (no
gradients), ``full`` (every parameter) or ``lora`` (peft adapters on its linear layers, the
base frozen). LoRA adapters are merged back into the weights before the final save, so a
trained folder reloads with ``GraftForConditionalGeneration.from_pretrained`` like any other.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from graft.backbones import compose_from_pretrained, naming_source
from graft.connectors.vpgc import decoder_layers
from graft.modeling import GraftForConditionalGeneration
from graft.processing import GraftProcessor
from graft.train.recipe import ComponentSpec, LoraSpec, Recipe

logger = logging.getLogger(__name__)

#: recipe component -> attribute of GraftForConditionalGeneration
COMPONENTS = {"vision": "vision_tower", "connector": "connector", "llm": "language_model"}


def build_model(recipe: Recipe) -> tuple[GraftForConditionalGeneration, GraftProcessor]:
    """The starting model and processor: a saved graft folder, or two backbones grafted now.

    Loaded in the run's precision (bf16 halves a 7B model); ``apply_stage`` then makes what
    learns fp32.
    """
    dtype = torch.bfloat16 if recipe.precision == "bf16" else torch.float32
    m, settings = recipe.model, recipe.processor_settings()
    if m.init_from is not None:
        with naming_source("model.init_from", m.init_from):
            model = GraftForConditionalGeneration.from_pretrained(m.init_from, dtype=dtype)
            return model, GraftProcessor.from_pretrained(m.init_from, **settings)
    model, tokenizer, image_processor = compose_from_pretrained(
        m.vision,
        m.llm,
        connector=m.connector,
        tokenizer_name_or_path=m.tokenizer,
        dtype=dtype,
        vision_feature_layer=m.vision_feature_layer,
        vision_feature_select_strategy=m.select_strategy,
    )
    return model, GraftProcessor(tokenizer, image_processor, model.config.image_seq_length, **settings)


def component_module(model: GraftForConditionalGeneration, component: str) -> nn.Module:
    return getattr(model, COMPONENTS[component])


def _lora(module: nn.Module, spec: LoraSpec, causal_lm: bool) -> PeftModel:
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        # CAUSAL_LM keeps the LM head out of "all-linear" and forwards labels / inputs_embeds
        task_type="CAUSAL_LM" if causal_lm else None,
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing``; its FutureWarning is
        # about peft's code, not the user's, and would print on every LoRA stage
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(module, config)


def apply_stage(model: GraftForConditionalGeneration, recipe: Recipe) -> None:
    """Freeze, unfreeze or add LoRA adapters per component, then make trainable weights fp32.

    Frozen weights keep the dtype they were loaded in (bf16 saves half the memory); trainable
    ones are fp32 so that AdamW's updates are not lost to rounding (mixed precision autocasts).
    """
    for component, spec in recipe.components().items():
        module = component_module(model, component)
        if spec.mode == "lora":
            module.requires_grad_(False)
            setattr(model, COMPONENTS[component], _lora(module, spec.lora, causal_lm=component == "llm"))
        elif callable(getattr(module, "set_trainable", None)):
            # a connector that decides what of it learns (VPG-C: W_g, W_o, Q_new; never its Q-Former)
            module.set_trainable(spec.mode == "full")
        else:
            module.requires_grad_(spec.mode == "full")
        if spec.top_layers is not None:
            _train_top_layers(module, spec.top_layers)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def _train_top_layers(llm: nn.Module, count: int) -> None:
    """Only the top ``count`` decoder layers and the final norm learn; everything below them (and
    the tied embeddings / head) is frozen, so backpropagation ends ``count`` layers down."""
    layers = decoder_layers(llm)
    if count > len(layers):
        raise ValueError(f"llm.top_layers is {count} but the LLM has {len(layers)} decoder layers")
    llm.requires_grad_(False)
    for layer in layers[len(layers) - count :]:
        layer.requires_grad_(True)
    norm = getattr(llm.get_decoder(), "norm", None)
    if isinstance(norm, nn.Module):
        norm.requires_grad_(True)


def set_train_mode(model: nn.Module, recipe: Recipe) -> None:
    """Train mode, except a frozen vision tower: eval mode there (no dropout) gives exactly the
    features the feature cache stored. A frozen LLM stays in train mode: gradients still flow
    through it to the connector, and transformers checkpoints activations only in train mode."""
    model.train()
    if recipe.vision.mode == "frozen":
        model.vision_tower.eval()


def enable_gradient_checkpointing(model: GraftForConditionalGeneration) -> None:
    # non-reentrant checkpointing: no need to force requires_grad on frozen inputs (LoRA, stage 1)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_decoder_layers(model: GraftForConditionalGeneration) -> int:
    """``torch.compile`` each of the LLM's decoder layers in place (dynamic shapes: batches of any
    length share one graph); the layers are alike, so one compilation serves them all. Returns
    how many were compiled."""
    layers = decoder_layers(model.language_model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _component_lr(spec: ComponentSpec, recipe: Recipe) -> float:
    return spec.lr if spec.lr is not None else recipe.optim.lr


def param_groups(model: GraftForConditionalGeneration, recipe: Recipe) -> list[dict[str, Any]]:
    """AdamW groups: one learning rate per component; no weight decay on biases and norms
    (every parameter with fewer than two dimensions)."""
    groups = []
    for component, spec in recipe.components().items():
        params = [p for p in component_module(model, component).parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        lr = _component_lr(spec, recipe)
        if decay:
            groups.append(
                {"name": component, "params": decay, "lr": lr, "weight_decay": recipe.optim.weight_decay}
            )
        if no_decay:
            groups.append(
                {"name": f"{component}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
            )
    return groups


def parameter_counts(model: GraftForConditionalGeneration) -> dict[str, dict[str, int]]:
    """Trainable and total parameters per component, for the log."""
    counts = {}
    for component in COMPONENTS:
        params = list(component_module(model, component).parameters())
        counts[component] = {
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params),
        }
    return counts


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that learns, by name: what a checkpoint must hold besides the base weights."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def merge_lora(model: GraftForConditionalGeneration, adapter_dir: str | os.PathLike | None = None) -> bool:
    """Fold LoRA adapters into the base weights (optionally saving them first, peft's format).

    Returns whether there was anything to merge. Afterwards the model is a plain graft model.
    """
    merged = False
    for component, attr in COMPONENTS.items():
        module = getattr(model, attr)
        if isinstance(module, PeftModel):
            if adapter_dir is not None:
                module.save_pretrained(Path(adapter_dir) / component)
            setattr(model, attr, module.merge_and_unload())
            merged = True
    return merged


def describe_stage(recipe: Recipe, counts: dict[str, dict[str, int]]) -> str:
    parts = []
    for component, spec in recipe.components().items():
        c = counts[component]
        lr = "" if spec.mode == "frozen" else f", lr {_component_lr(spec, recipe):g}"
        parts.append(f"{component}: {spec.mode} ({c['trainable']:,} / {c['total']:,} trainable{lr})")
    return "; ".join(parts)
