"""What ``graft plan`` needs to know about a recipe's model: parameters by role and the shapes.

The model is built on the meta device exactly as ``graft inspect`` builds it (``meta_model``: the
stage applied, LoRA adapters added), so the counts are the ones ``graft train`` logs. A recipe
that names hub ids without writing the architectures out (the shipped LLaVA-1.5 recipes) gets
them from ``KNOWN_ARCHITECTURES``: the published ``config.json`` values of a few checkpoints,
used only when the recipe writes no ``model.vision_config`` / ``model.text_config`` of its own
and the name is not a local folder. A recipe that starts from another stage's output
(``model.init_from``) that does not exist yet borrows the model of the recipe, beside it or
shipped with graft, whose ``output_dir`` is that folder (stage 2 from stage 1).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.train.recipe import Recipe, load_recipe

_CLIP_L = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_LLAMA = {
    "model_type": "llama",
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
#: hub id -> the checkpoint's architecture (its config.json on the hub), for offline planning
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {**_CLIP_L, "image_size": 336},
    "openai/clip-vit-large-patch14": {**_CLIP_L, "image_size": 224},
    "lmsys/vicuna-7b-v1.5": {
        **_LLAMA,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "lmsys/vicuna-13b-v1.5": {
        **_LLAMA,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
    },
}

#: how many times a parameter's 2 FLOPs per token (one multiply-add) are spent in a training step
FLOP_FACTORS = {"trainable": 6, "on_path": 4, "forward": 2}


@dataclass
class ModelShape:
    """A model's parameters by role and the dimensions the activation estimate needs.

    ``roles[component]`` holds matrix-multiply parameters (embedding tables are look-ups, not
    FLOPs) as ``trainable`` (weight and activation gradients), ``on_path`` (frozen, but gradients
    flow through them to something below that learns) and ``forward`` (frozen, forward only).
    """

    components: dict[str, dict[str, int]]
    roles: dict[str, dict[str, int]]
    hidden: int
    layers: int
    heads: int
    vocab: int
    vision_hidden: int = 0
    vision_layers: int = 0
    vision_heads: int = 1
    vision_seq: int = 0
    image_tokens: int = 0
    llm_layers_on_path: int = 0
    vision_layers_on_path: int = 0
    largest_unit: int = 0
    largest_unit_trainable: int = 0
    lora: int = 0
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(c["trainable"] for c in self.components.values())

    @property
    def total(self) -> int:
        return sum(c["total"] for c in self.components.values())

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "trainable": self.trainable, "frozen": self.frozen}


def _known(recipe: Recipe) -> list[str]:
    """Fill in the architectures of known hub ids the recipe does not write out."""
    m, used = recipe.model, []
    for ref, key in ((m.vision, "vision_config"), (m.llm, "text_config")):
        if getattr(m, key) is None and ref in KNOWN_ARCHITECTURES and not Path(ref).exists():
            setattr(m, key, dict(KNOWN_ARCHITECTURES[ref]))
            used.append(ref)
    return used


def _borrow_model(recipe: Recipe) -> str | None:
    """For an ``init_from`` folder not built yet: the model of the recipe that writes it."""
    target = Path(recipe.model.init_from or "").resolve()
    if target.is_dir() or not recipe.model.init_from:
        return None
    from graft.train.shipped import CONFIGS_DIR

    folders = [Path(recipe.source).resolve().parent] if recipe.source else []
    for folder in dict.fromkeys([*folders, CONFIGS_DIR]):
        for path in sorted(folder.glob("*.y*ml")):
            try:
                other = load_recipe(path)
            except (ValueError, OSError):
                continue
            if Path(other.output_dir).resolve() == target and other.model.init_from is None:
                recipe.model = copy.deepcopy(other.model)
                return str(path)
    return None


def _layer_stack(module: Any) -> Any:
    from torch import nn

    stacks = [m for m in module.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    return max(stacks, key=len) if stacks else None


def _unit(params: Any) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _roles(model: Any) -> tuple[dict[str, dict[str, int]], dict[str, int], tuple[int, int]]:
    """Matmul parameters by role, layers on the backward path, the largest gathered unit.

    Parameters are walked in registration order, which is forward order for transformers'
    models (vision, connector, LLM; embeddings, layers, norm, head): a frozen parameter is on the
    backward path once any parameter before it learns."""
    from torch import nn

    from graft.train.stages import COMPONENTS

    seen_trainable, seen = False, set()
    roles: dict[str, dict[str, int]] = {}
    on_path_layers: dict[str, int] = {}
    largest = (0, 0)  # the largest unit a sharded strategy gathers: (parameters, trainable ones)
    for component, attr in COMPONENTS.items():
        module = getattr(model, attr)
        counts = {"trainable": 0, "on_path": 0, "forward": 0}
        layer_of: dict[int, int] = {}
        stack = _layer_stack(module)
        if stack is not None:
            for i, layer in enumerate(stack):
                layer_of.update({id(p): i for p in layer.parameters()})
                largest = max(largest, _unit(layer.parameters()))
        path_layers: set[int] = set()
        for sub in module.modules():
            own = [p for p in sub.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in own)
            largest = max(largest, _unit(own))
            for p in own:
                seen_trainable = seen_trainable or p.requires_grad
                role = "trainable" if p.requires_grad else "on_path" if seen_trainable else "forward"
                if role != "forward" and id(p) in layer_of:
                    path_layers.add(layer_of[id(p)])
                if not isinstance(sub, nn.Embedding):
                    counts[role] += p.numel()
        roles[component] = counts
        on_path_layers[component] = len(path_layers)
    return roles, on_path_layers, largest


def model_shape(recipe: Recipe) -> ModelShape:
    """Build the recipe's model on the meta device (no weights) and measure it."""
    from graft.train.meta import meta_model
    from graft.train.stages import parameter_counts

    recipe = copy.deepcopy(recipe)
    notes = []
    borrowed = _borrow_model(recipe)
    if borrowed is not None:
        notes.append(f"model.init_from is not built yet: the model of {borrowed} (the stage that writes it)")
    known = _known(recipe)
    if known:
        notes.append(f"architectures from graft's table of known checkpoints: {', '.join(known)}")
    model = meta_model(recipe)
    roles, on_path_layers, largest = _roles(model)
    text, vision = model.config.text_config, model.config.vision_config
    image_size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 1)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return ModelShape(
        components=parameter_counts(model),
        roles=roles,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        vocab=text.vocab_size,
        vision_hidden=getattr(vision, "hidden_size", 0),
        vision_layers=getattr(vision, "num_hidden_layers", 0),
        vision_heads=getattr(vision, "num_attention_heads", 1),
        vision_seq=(image_size // patch) ** 2 + 1 if image_size else 0,
        image_tokens=model.config.image_seq_length or 0,
        llm_layers_on_path=on_path_layers["llm"],
        vision_layers_on_path=on_path_layers["vision"],
        largest_unit=largest[0],
        largest_unit_trainable=largest[1],
        lora=lora,
        source=recipe.source,
        notes=notes,
    )
