"""Training: recipes (YAML), stages (what learns, LoRA), the accelerate loop, checkpoints."""

from graft.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from graft.train.loop import TrainResult, train
from graft.train.recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from graft.train.shipped import packaged_recipe, recipe_names
from graft.train.stages import apply_stage, build_model, merge_lora, param_groups, parameter_counts

__all__ = [
    "Recipe",
    "RecipeError",
    "TrainResult",
    "TrainState",
    "apply_stage",
    "build_model",
    "latest_checkpoint",
    "load_checkpoint",
    "load_recipe",
    "merge_lora",
    "packaged_recipe",
    "param_groups",
    "parameter_counts",
    "recipe_from_dict",
    "recipe_names",
    "save_checkpoint",
    "train",
]
