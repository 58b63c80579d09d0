"""What a training run's output folder holds it to: one run writes it at a time (``TRAIN_LOCK``),
a resumed run continues the run recorded there, not another (``check_same_recipe``), and a run
that does not resume never trains over one silently (``start_over``).

A resume reloads the weights, optimizer, schedule and data position of a checkpoint; a recipe
changed in between (another learning rate, schedule, batch size or step count) would go on under
settings that neither run had, and ``recipe.yaml`` would then name settings the model was not
trained with. Only where and how often things are written may change (``RESUME_FREE``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from graft.files import FileLock
from graft.train.checkpoint import latest_checkpoint
from graft.train.metrics_log import LOG_FILE
from graft.train.recipe import Recipe
from graft.train.shipped import RUN_RECIPE

#: held by the run writing an output folder (``graft.files.FileLock``)
TRAIN_LOCK = ".train.lock"
#: recipe fields a resumed run may change
RESUME_FREE = ("resume", "output_dir", "log_every", "save_every", "tensorboard", "data.skip_bad")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_recipe(recipe: Recipe, output_dir: str | Path) -> None:
    """Refuse to resume the run in ``output_dir`` (a checkpoint and its ``recipe.yaml`` there)
    with a recipe that differs from it outside ``RESUME_FREE``; the error names the fields."""
    path = Path(output_dir) / RUN_RECIPE
    if recipe.resume is False or not path.is_file():
        return
    if latest_checkpoint(output_dir) is None:
        if (Path(output_dir) / "config.json").is_file():  # finished, with no checkpoint to go on from
            raise ValueError(
                f"{output_dir}: its run is finished (its model is saved there) and kept no checkpoint: "
                "nothing to resume; --overwrite trains it again, or start a new run in another folder "
                "(model.init_from can start from this one's model)"
            )
        return  # stopped before its first checkpoint: nothing kept that another recipe would contradict
    before = _flat(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    now = _flat(yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False)))
    keys = (before.keys() | now.keys()) - set(RESUME_FREE)
    changed = sorted(k for k in keys if before.get(k) != now.get(k))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ValueError(
            f"{output_dir}: resuming its run with another recipe ({shown}{more}); resume with the run's "
            f"own settings ({path}), or start a new run in another folder (model.init_from can start "
            "from this one's saved model)"
        )


def holds_run(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds what a run made: a saved model, a checkpoint or logged steps. A
    run that stopped before any (bad data, say) left only its ``recipe.yaml``: a rerun may start over."""
    folder = Path(output_dir)
    log = folder / LOG_FILE
    return (
        (folder / "config.json").exists()
        or latest_checkpoint(folder) is not None
        or (log.is_file() and log.stat().st_size > 0)
    )


def start_over(output_dir: str | Path, overwrite: bool) -> None:
    """Before a run that does not resume: refuse a folder that holds one, or with ``overwrite``
    remove it, when it is a folder ``graft train`` wrote (it holds ``recipe.yaml``)."""
    folder = Path(output_dir)
    if not holds_run(folder):
        return
    if not overwrite:
        raise ValueError(
            f"{folder} holds a training run or a model; --resume continues its run, --overwrite starts "
            "it over, or give another --out"
        )
    if not (folder / RUN_RECIPE).is_file():
        raise ValueError(f"{folder} holds a model that graft train did not write; give another --out")
    with FileLock(folder / TRAIN_LOCK, "graft train run"):  # never from under a run still writing it
        shutil.rmtree(folder)
