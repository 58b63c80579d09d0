"""Training recipes: plain dataclasses loaded from YAML, strictly.

A recipe says which model to start from, which data and template, what each component does
(``frozen`` | ``full`` | ``lora``) at which learning rate, and how to optimise. Every key is
checked: an unknown key anywhere is an error that names the key, the file and the valid keys.

Paths written in a recipe are relative to the recipe file (unless absolute); paths given as overrides
(the CLI's ``--set``) are relative to the working directory, and so are those of a recipe graft ships
(given by name, ``graft train shapes-stage1``: its own folder lies inside the installed package; see
``graft.train.shipped``). ``model.vision``, ``model.llm`` and ``model.tokenizer`` may also be hub ids:
a value is a local path when it starts with ``./`` or ``../`` or exists beside the recipe, else a hub id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from graft.files import write_text_atomic
from graft.templates import TEMPLATE_NAMES, TEMPLATES
from graft.train.distributed_spec import STRATEGIES, DistributedSpec
from graft.train.shipped import find_recipe, is_packaged
from graft.train.shipped import packaged_recipe as packaged_recipe  # its former home: still importable

MODES = ("frozen", "full", "lora")
PRECISIONS = ("fp32", "bf16")
OBJECTIVES = ("lm", "word_alignment")
SCHEDULERS = ("cosine", "linear", "constant")
CACHE_DTYPES = ("fp32", "bf16", "fp16")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


@dataclass
class ModelSpec:
    #: a graft model folder to start from; when given, the fields below it are not used
    init_from: str | None = None
    vision: str | None = None
    llm: str | None = None
    #: defaults to the LLM's folder / hub id
    tokenizer: str | None = None
    #: connector name or ``{"name": ..., **options}`` (options are checked by the connector);
    #: default ``graft.config.DEFAULT_CONNECTOR``. Like every field below ``init_from`` it is not
    #: used with ``init_from``: that folder's config.json holds its connector
    connector: dict[str, Any] | str | None = None
    vision_feature_layer: int = -2
    select_strategy: str = "default"
    #: the backbones' architectures written out (a transformers config dict with ``model_type``),
    #: so ``graft inspect`` can count parameters without reading the checkpoints; training
    #: reads the checkpoints' own configs
    vision_config: dict[str, Any] | None = None
    text_config: dict[str, Any] | None = None


@dataclass
class DataSpec:
    #: LLaVA-format JSON / JSONL files
    train: list[str] = field(default_factory=list)
    #: image paths in the records are relative to this (default: the first train file's folder)
    image_root: str | None = None
    #: LLaVA-1.5's "pad" aspect mode (default: the model folder's setting, else off)
    pad_to_square: bool | None = None
    #: longest sample in tokens (default: the model folder's / tokenizer's)
    max_length: int | None = None
    skip_bad: bool = False
    num_workers: int = 0
    group_by_modality: bool = True
    #: per-batch share of each ``train`` file, in order (Cheetah: ``[64, 24]`` captions to
    #: synthetic pairs); every batch then takes a fixed count from each file, and an epoch is
    #: one pass over the first. Default: the files are pooled and batched by length.
    mix: list[float] | None = None
    #: padding-free batches: a micro-batch is one row, each sample attending only to itself
    packing: bool = False
    #: batches by token budget: length-sorted samples fill a batch up to this many tokens
    max_batch_tokens: int | None = None


@dataclass
class LoraSpec:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    #: module names, or peft's "all-linear" (every linear layer but the output head)
    target_modules: list[str] | str = "all-linear"


@dataclass
class ComponentSpec:
    mode: str = "frozen"
    #: learning rate of this component (default: ``optim.lr``)
    lr: float | None = None
    lora: LoraSpec = field(default_factory=LoraSpec)
    #: llm in ``full`` mode: train only its top N decoder layers and final norm (embeddings and
    #: head stay frozen), so the backward pass stops N layers down; with a frozen connector and
    #: vision tower that is about twice as fast on a small LLM. Default: every parameter.
    top_layers: int | None = None


@dataclass
class OptimSpec:
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0


@dataclass
class FeatureCacheSpec:
    enabled: bool = False
    #: default: ``<output_dir>/feature_cache``; point two stages at one folder to share it
    dir: str | None = None
    dtype: str = "fp32"
    #: keep every cached feature in memory too (else read from disk per batch)
    in_memory: bool = True
    #: images per vision-tower batch while filling the cache
    batch_size: int = 64


@dataclass
class Recipe:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    #: conversation template (default: the model folder's, else ``DEFAULT_TEMPLATE``)
    template: str | None = None
    vision: ComponentSpec = field(default_factory=ComponentSpec)
    connector: ComponentSpec = field(default_factory=lambda: ComponentSpec(mode="full"))
    llm: ComponentSpec = field(default_factory=ComponentSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    #: samples per process per forward pass
    batch_size: int = 16
    #: micro-batches per optimizer step (default 1, or derived from global_batch_size)
    grad_accum: int | None = None
    #: samples per optimizer step over all processes; sets grad_accum for the process count
    global_batch_size: int | None = None
    epochs: float = 1.0
    #: stop after this many optimizer steps (overrides epochs)
    max_steps: int | None = None
    precision: str = "fp32"
    #: lm (the LLM's next-token loss) or word_alignment (``graft.word_alignment``: the connector
    #: alone, pulled onto the LLM's words of each caption; the LLM does not run)
    objective: str = "lm"
    gradient_checkpointing: bool = False
    #: run the opening tokens every sample of a batch shares (the chat template's system prompt)
    #: once per batch, not once per sample (``graft.shared_prefix``): the same loss and gradients;
    #: x1.2 warm-up and x1.1 stage-2 samples/s in the demo (benchmarks/smollm2_speed.py); under
    #: DDP or one process only (``graft.train.distributed.may_share_prefix``)
    share_prefix: bool = True
    #: torch.compile every decoder layer of the LLM (dynamic shapes; turns ``share_prefix`` off):
    #: stage-2 samples/s on a 2-core Xeon with AMX in bf16 once compiled x1.35 (2026-12-05), x1.12
    #: (2026-12-07; benchmarks/smollm2_speed.py); its first steps compile
    compile: bool = False
    feature_cache: FeatureCacheSpec = field(default_factory=FeatureCacheSpec)
    seed: int = 0
    log_every: int = 10
    #: write a resumable checkpoint every N optimizer steps (0: never)
    save_every: int = 0
    keep_checkpoints: int = 2
    output_dir: str = "runs/train"
    #: true (newest checkpoint in output_dir, if any) or a checkpoint folder
    resume: bool | str = False
    #: also log to TensorBoard when it is installed
    tensorboard: bool = True
    #: how processes train together: ddp | zero2 | zero3 | zero3_offload | fsdp2 (graft.train.distributed)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)

    def __post_init__(self) -> None:
        self.source = ""  # the YAML file it came from (not a recipe key)

    def components(self) -> dict[str, ComponentSpec]:
        return {"vision": self.vision, "connector": self.connector, "llm": self.llm}

    def processor_settings(self) -> dict[str, Any]:
        """What this recipe sets on the processor (template, pad_to_square, max_length); a setting
        left out keeps the model folder's (``model.init_from``), else ``GraftProcessor``'s default."""
        d = self.data
        given = {"template": self.template, "pad_to_square": d.pad_to_square, "max_length": d.max_length}
        return {key: value for key, value in given.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- paths -----------------------------------------------------------------------------------------
_PATHS = ("model.init_from", "data.image_root", "feature_cache.dir", "output_dir", "distributed.config")
_PATH_LISTS = ("data.train",)
_MODEL_REFS = ("model.vision", "model.llm", "model.tokenizer")  # a path or a hub id


def _resolve(value: Any, base: Path, key: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if key in _PATH_LISTS:
        values = [value] if isinstance(value, str) else value
        return [str((base / os.path.expanduser(v)).resolve()) if isinstance(v, str) else v for v in values]
    if not isinstance(value, str):
        return value
    expanded = os.path.expanduser(value)
    if key in _MODEL_REFS:
        local = value.startswith(("./", "../", "~")) or (base / expanded).exists()
        return str((base / expanded).resolve()) if local else value
    return str((base / expanded).resolve())


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for key in (*_PATHS, *_PATH_LISTS, *_MODEL_REFS, "resume"):
        section, _, name = key.rpartition(".")
        holder = raw.get(section) if section else raw
        if isinstance(holder, dict) and name in holder:
            holder[name] = _resolve(holder[name], base, key)


# --- strict construction -----------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Light checks: YAML reads ``1e-3`` as a string, so numbers written that way are accepted."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: {value!r} is not a valid {tp}")
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return float(value)
    elif (tp is int and isinstance(value, int) and not isinstance(value, bool)) or (
        tp in (bool, str) and isinstance(value, tp)
    ):
        return value
    elif typing.get_origin(tp) is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif typing.get_origin(tp) is dict and isinstance(value, dict):
        return value
    raise RecipeError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    where = f"{source}: {prefix or 'top level'}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(raw).__name__}")
    types_ = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise RecipeError(
            f"{source}: unknown key {key!r}; valid keys{' of ' + prefix if prefix else ''}: "
            f"{', '.join(sorted(types_))}"
        )
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = types_[name]
        if dataclasses.is_dataclass(sub):
            if isinstance(value, dict):
                # a section given in part keeps the rest of its default (connector: mode full)
                default = dataclasses.asdict(cls.__dataclass_fields__[name].default_factory())
                _merge(default, value, key + ".")
                value = default
            kwargs[name] = _build(sub, value or {}, key, source)
        else:
            kwargs[name] = _coerce(value, types_[name], f"{source}: {key}")
    return cls(**kwargs)


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Put an override into the raw mapping, checking the key against the schema first."""
    cls: Any = Recipe
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        types_ = typing.get_type_hints(cls)
        if part not in types_:
            here = ".".join(parts[:i])
            raise RecipeError(
                f"{source}: unknown override key {key!r}; valid keys{' of ' + here if here else ''}: "
                f"{', '.join(sorted(types_))}"
            )
        if i == len(parts) - 1:
            node[part] = value
            return
        cls = types_[part]
        if not dataclasses.is_dataclass(cls):
            raise RecipeError(f"{source}: override key {key!r}: {'.'.join(parts[: i + 1])} has no sub-keys")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]


def _merge(into: dict[str, Any], new: dict[str, Any], prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        # a connector spec is replaced whole: options of another connector would not apply
        if isinstance(value, dict) and isinstance(into.get(key), dict) and dotted != "model.connector":
            _merge(into[key], value, dotted + ".")
        else:
            into[key] = value


def _validate(recipe: Recipe, source: str) -> None:
    m = recipe.model
    if m.init_from is None and (m.vision is None or m.llm is None):
        raise RecipeError(f"{source}: model needs init_from (a graft model folder) or both vision and llm")
    if recipe.connector.mode == "lora":
        raise RecipeError(f"{source}: connector.mode lora is not supported; use full or frozen")
    for name, comp in recipe.components().items():
        if comp.mode not in MODES:
            raise RecipeError(f"{source}: {name}.mode is {comp.mode!r}; valid modes: {', '.join(MODES)}")
        if comp.top_layers is not None and (name != "llm" or comp.mode != "full" or comp.top_layers < 1):
            raise RecipeError(f"{source}: {name}.top_layers needs llm.mode full and a count >= 1")
    if all(c.mode == "frozen" for c in recipe.components().values()):
        raise RecipeError(f"{source}: every component is frozen: nothing to train")
    checks = [
        (
            recipe.template is None or recipe.template in TEMPLATES,
            f"unknown template {recipe.template!r}; valid templates: {TEMPLATE_NAMES}",
        ),
        (recipe.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
        (recipe.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
        (
            recipe.objective == "lm" or (recipe.llm.mode == "frozen" and recipe.vision.mode == "frozen"),
            "objective word_alignment trains the connector alone: vision.mode and llm.mode frozen",
        ),
        (recipe.optim.scheduler in SCHEDULERS, f"optim.scheduler must be one of {SCHEDULERS}"),
        (recipe.distributed.strategy in STRATEGIES, f"distributed.strategy must be one of {STRATEGIES}"),
        (recipe.feature_cache.dtype in CACHE_DTYPES, f"feature_cache.dtype must be one of {CACHE_DTYPES}"),
        (len(recipe.optim.betas) == 2, "optim.betas needs two numbers"),
        (recipe.batch_size >= 1, "batch_size must be >= 1"),
        (recipe.grad_accum is None or recipe.grad_accum >= 1, "grad_accum must be >= 1"),
        (
            recipe.grad_accum is None or recipe.global_batch_size is None,
            "give grad_accum or global_batch_size, not both",
        ),
        (recipe.max_steps is not None or recipe.epochs > 0, "epochs must be > 0 (or set max_steps)"),
        (recipe.max_steps is None or recipe.max_steps >= 0, "max_steps must be >= 0 (0: epochs decide)"),
        (recipe.optim.lr > 0, "optim.lr must be > 0"),
        *(
            (spec.lr is None or spec.lr > 0, f"{name}.lr must be > 0")
            for name, spec in recipe.components().items()
        ),
        (recipe.log_every >= 1, "log_every must be >= 1"),
        (recipe.save_every >= 0, "save_every must be >= 0"),
        (recipe.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (bool(recipe.data.train), "data.train needs at least one file"),
        (
            recipe.data.mix is None or len(recipe.data.mix) == len(recipe.data.train),
            f"data.mix has {len(recipe.data.mix or [])} shares for {len(recipe.data.train)} data.train files",
        ),
        (
            recipe.data.mix is None or (min(recipe.data.mix) >= 0 and recipe.data.mix[0] > 0),
            "data.mix shares must be >= 0 and the first (the epoch's main data) > 0",
        ),
        (
            not recipe.feature_cache.enabled or recipe.vision.mode == "frozen",
            "feature_cache needs a frozen vision tower (vision.mode: frozen)",
        ),
        (
            recipe.data.max_batch_tokens is None
            or (recipe.data.max_batch_tokens >= 1 and not recipe.data.mix),
            "data.max_batch_tokens must be >= 1 and cannot go with data.mix (it fixes each batch's counts)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{source}: {message}")


def recipe_from_dict(
    raw: dict[str, Any], base_dir: str | os.PathLike = ".", source: str = "<recipe>"
) -> Recipe:
    """Build and check a recipe from a mapping whose relative paths are relative to ``base_dir``."""
    raw = dict(raw or {})
    _resolve_paths(raw, Path(base_dir))
    return _checked(raw, source)


def _checked(raw: dict[str, Any], source: str) -> Recipe:
    recipe = _build(Recipe, raw, "", source)
    recipe.source = source
    _validate(recipe, source)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe: a file, a training run's output folder (the recipe it ran) or a shipped
    recipe's name (``"shapes-stage1"``);
    ``overrides`` maps dotted keys (``"optim.lr"``) to values."""
    path = find_recipe(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    _resolve_paths(raw, Path.cwd() if is_packaged(path) else path.resolve().parent)
    if overrides:
        # overrides come from a command line: their relative paths are the working directory's
        extra: dict[str, Any] = {}
        for key, value in overrides.items():
            _set_dotted(extra, key, value, f"{path} (overrides)")
        _resolve_paths(extra, Path.cwd())
        _merge(raw, extra)
    return _checked(raw, str(path))


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the recipe as run (absolute paths, overrides applied) next to the run's outputs."""
    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
