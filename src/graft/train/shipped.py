"""The recipes graft ships, as package data in ``graft/configs/``, and how a recipe is named.

A recipe is given as a YAML file or, for a shipped one, by name: ``graft train shapes-stage1``
reads ``graft/configs/shapes-stage1.yaml`` wherever graft is installed (a source checkout, or a
wheel). A shipped recipe's folder lies inside the installed package, so its relative paths are
read against the working directory instead (see ``graft.train.recipe.load_recipe``).
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
#: the recipe a training run ran, written into its output folder (absolute paths, overrides applied)
RUN_RECIPE = "recipe.yaml"


def recipe_names() -> list[str]:
    """The names of the shipped recipes, sorted."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def packaged_recipe(name: str) -> Path:
    """A shipped recipe's file: ``"shapes-stage1"`` -> ``graft/configs/shapes-stage1.yaml``."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no recipe {name!r} shipped with graft (in {CONFIGS_DIR}); "
            f"known: {', '.join(recipe_names()) or 'none'}"
        )
    return path


def is_packaged(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the shipped recipes (not a copy of one elsewhere)."""
    return Path(path).resolve().parent == CONFIGS_DIR


def find_recipe(recipe: str | os.PathLike) -> Path:
    """The file of ``recipe``: a YAML path, a training run's output folder (the ``RUN_RECIPE`` it
    ran), else the name of a shipped recipe (``shapes-stage1``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    if path.is_dir() and (path / RUN_RECIPE).is_file():
        return path / RUN_RECIPE
    if os.fspath(recipe) == path.name and (CONFIGS_DIR / f"{path.name}.yaml").is_file():
        return CONFIGS_DIR / f"{path.name}.yaml"
    if path.is_dir():
        raise FileNotFoundError(
            f"{recipe} is a folder without {RUN_RECIPE}: give a recipe file or a shipped recipe's name "
            f"(a folder `graft train` wrote holds the recipe it ran as {RUN_RECIPE})"
        )
    message = f"recipe not found: {recipe}"
    if path.suffix in (".yaml", ".yml") and path.stem in recipe_names():
        message += f"; graft ships a recipe named {path.stem!r}: give that name instead of a path"
    raise FileNotFoundError(f"{message} (recipes shipped with graft, by name: {', '.join(recipe_names())})")
