"""``train(recipe)``: one plain training loop through ``accelerate``.

Build (or load) the model, apply the stage, read the data, optionally fill the vision feature
cache, then: accumulate ``grad_accum`` micro-batches, clip, step AdamW and the warmup + decay
schedule, log, checkpoint. At the end the model and its processor are saved into
``output_dir`` so the folder reloads with ``GraftForConditionalGeneration.from_pretrained``.

The loss of a step is the mean over every supervised token of the step, on every process:
each micro-batch's summed token loss is divided by the step's global token count (transformers'
``num_items_in_batch``), so long and short samples count per token, as they would in one big
batch, whatever the accumulation and the process count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from graft.config import IGNORE_INDEX
from graft.data import LlavaDataset
from graft.files import FileLock
from graft.modeling import GraftForConditionalGeneration
from graft.packing import enable_packing, is_packed
from graft.precision import use_bf16
from graft.train import distributed as dist
from graft.train.batches import data_loader, fill_feature_cache, model_inputs, stream
from graft.train.checkpoint import TrainState, load_checkpoint, resolve_resume, save_checkpoint, save_final
from graft.train.metrics_log import MetricsLogger, StepWindow
from graft.train.recipe import Recipe, save_recipe
from graft.train.resume import TRAIN_LOCK, check_same_recipe
from graft.train.shipped import RUN_RECIPE
from graft.train.stages import (
    apply_stage,
    build_model,
    compile_decoder_layers,
    describe_stage,
    enable_gradient_checkpointing,
    merge_lora,
    param_groups,
    parameter_counts,
    set_train_mode,
)
from graft.word_alignment import content_words

logger = logging.getLogger(__name__)

SCHEDULES = {
    "cosine": get_cosine_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
}


@dataclass
class TrainResult:
    #: loss of the last step this call ran; None when it ran none (a finished run resumed)
    final_loss: float | None
    steps: int
    output_dir: Path
    #: loss of every optimizer step this call ran (a resumed run: only the new ones)
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    #: processes that trained together (DDP)
    processes: int = 1
    #: the trained model (LoRA merged), still on the training device (ZeRO-3, FSDP2: gathered on
    #: CPU in the main process, None in the others)
    model: GraftForConditionalGeneration | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "final_loss": self.final_loss,
            "steps": self.steps,
            "output_dir": str(self.output_dir),
            "checkpoints": [str(p) for p in self.checkpoints],
            "seconds": round(self.seconds, 2),
            "processes": self.processes,
        }


# --- set-up ---------------------------------------------------------------------------------------
def may_share_prefix(recipe: Recipe, log: bool = False) -> bool:
    """The recipe's ``share_prefix`` where it can act: under DDP or one process
    (``dist.may_share_prefix``) and not with compiled decoder layers, whose cache update reads the
    layer's index, so that each layer compiles its own graph and dynamo stops compiling after
    eight (on the Xeon with AMX, stage 2's batches: x1.04 compiled with the prefix, x1.12 without
    it; benchmarks/smollm2_speed.py). With ``log``, says when ``compile`` turns it off."""
    if not (recipe.share_prefix and dist.may_share_prefix(recipe.distributed)):
        return False
    if recipe.compile and log:
        logger.info("share_prefix: off with compile (compiled layers run every sample's opening)")
    return not recipe.compile


def _grad_accum(recipe: Recipe, num_processes: int) -> int:
    if recipe.global_batch_size is None:
        return recipe.grad_accum or 1
    per_step = recipe.batch_size * num_processes
    accum, rest = divmod(recipe.global_batch_size, per_step)
    if rest or accum < 1:
        raise ValueError(
            f"global_batch_size {recipe.global_batch_size} is not a multiple of batch_size "
            f"{recipe.batch_size} x {num_processes} process(es)"
        )
    return accum


# --- one optimizer step ----------------------------------------------------------------------------------
def _sizes(inputs: dict[str, Any]) -> tuple[int, int]:
    """Samples and real tokens of a micro-batch, padded or packed."""
    if is_packed(inputs):
        return len(inputs["cu_seq_lens_q"]) - 1, inputs["input_ids"].numel()
    return inputs["input_ids"].shape[0], int(inputs["attention_mask"].sum())


def _step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    micro_batches: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainable: list[torch.nn.Parameter],
    max_grad_norm: float,
    unused_image: str | None = None,
    word_mask: torch.Tensor | None = None,
    share_prefix: bool = False,
) -> dict[str, Any]:
    """One optimizer step; ``unused_image`` (sharded strategies): what a micro-batch without images
    runs the connector on (see ``GraftForConditionalGeneration.forward``). With ``word_mask``
    (``[vocabulary]`` bools, ``content_words``: the word-alignment objective) the loss is a mean
    over the step's samples. ``share_prefix``: run each micro-batch's shared opening once
    (``graft.shared_prefix``; the recipe's setting where ``may_share_prefix`` allows it)."""
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}  # the rates this step uses
    if word_mask is not None:
        for b in micro_batches:
            b["caption_words"] = word_mask[b["labels"].clamp(min=0)]
        local = torch.tensor(sum(b["input_ids"].shape[0] for b in micro_batches))
    else:
        local = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in micro_batches)
    num_tokens = accelerator.reduce(local.to(accelerator.device), reduction="sum").clamp(min=1)
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, inputs in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        images = "pixel_values" in inputs or "vision_features" in inputs
        blank = {"unused_image": unused_image} if unused_image and not images else {}
        with dist.no_sync(accelerator, model, last):
            out = model(
                **inputs,
                **blank,
                num_items_in_batch=num_tokens,
                use_cache=False,
                supervised_logits_only=True,
                share_prefix=share_prefix,
            )
            loss = out.loss
            if not loss.requires_grad:
                # nothing trainable in this batch's graph (text only, connector-only stage): a zero
                # term keeps it in the step, so every process still joins DDP's gradient exchange
                loss = loss + sum(p.sum() for p in trainable) * 0.0
            # DDP averages gradients over processes; the loss is already a share of the global mean
            dist.backward(accelerator, model, loss * accelerator.num_processes, last)
        loss_sum += out.loss.detach().float()
    grad_norm = dist.clip(accelerator, model, trainable, max_grad_norm)
    optimizer.step()  # under DeepSpeed a no-op: the engine stepped after the last micro-batch
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sizes = [_sizes(b) for b in micro_batches]
    counts = torch.tensor(
        [float(sum(n for n, _ in sizes)), float(sum(t for _, t in sizes))], device=accelerator.device
    )
    totals = accelerator.reduce(torch.cat([loss_sum.reshape(1), counts]), reduction="sum")
    stats = {"loss": totals[0].item(), "samples": totals[1].item(), "tokens": totals[2].item(), "lrs": lrs}
    if grad_norm is not None:
        stats["grad_norm"] = float(grad_norm)
    return stats


# --- train -----------------------------------------------------------------------------------------------
def train(recipe: Recipe, on_step: Callable[[int, int, Any, Any], None] | None = None) -> TrainResult:
    """Run one stage of a recipe; returns the final loss, step count and paths.

    ``on_step(step, total_steps, model, processor)``, when given, runs on every process before the first
    step (step 0) and after every optimizer step, under the run's autocast: a hook for
    measuring the model as it learns (the demo's learning curve). It decides itself when to act
    and must leave the model as it found it (``generate_answers`` does)."""
    started = time.perf_counter()
    output_dir = Path(recipe.output_dir)
    # the process group is set up here, before anything asks which process is the main one
    processes = dist.start(recipe.distributed)
    if recipe.precision == "bf16" and not use_bf16(True, processes.device):
        recipe = replace(recipe, precision="fp32")  # what runs, and what recipe.yaml records
    with contextlib.ExitStack() as held:
        if processes.is_main_process:  # one run writes a folder; a resume continues its own run
            output_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(FileLock(output_dir / TRAIN_LOCK, "graft train run"))
            check_same_recipe(recipe, output_dir)
            save_recipe(recipe, output_dir / RUN_RECIPE)
        return _train(recipe, processes, on_step, started)


def _train(
    recipe: Recipe, processes: Any, on_step: Callable[[int, int, Any, Any], None] | None, started: float
) -> TrainResult:
    """``train`` once its output folder is held: the model, the data, the loop and the save."""
    output_dir = Path(recipe.output_dir)
    is_main = processes.is_main_process
    set_seed(recipe.seed)

    model, processor = build_model(recipe)
    apply_stage(model, recipe)
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if recipe.compile:
        compiled = compile_decoder_layers(model)
        if is_main:
            logger.info("torch.compile: %d decoder layers (the first steps compile them)", compiled)
    if is_main:
        logger.info("stage: %s", describe_stage(recipe, parameter_counts(model)))
    d = recipe.data
    image_root = d.image_root or str(Path(d.train[0]).parent)
    dataset = LlavaDataset(d.train, image_root, processor, skip_bad=d.skip_bad, max_length=d.max_length)
    grad_accum = _grad_accum(recipe, processes.num_processes)
    # a text-only batch leaves the connector (and vision tower) out of the graph: DDP must know
    unused = not all(dataset.has_image)
    hidden = model.config.text_config.hidden_size
    accelerator = dist.accelerator_for(recipe, unused, grad_accum, hidden)
    model.to(accelerator.device)
    if d.packing:
        logger.info(
            "padding-free batches (data.packing): attention %s", enable_packing(model, accelerator.device)
        )
    cache = fill_feature_cache(recipe, model, dataset, accelerator) if recipe.feature_cache.enabled else None
    loader, sampler = data_loader(recipe, processor, accelerator, dataset)

    total_steps = recipe.max_steps or math.ceil(recipe.epochs * sampler.batches_per_epoch / grad_accum)
    dist.shard(model, recipe, accelerator.device)  # FSDP2 only
    o = recipe.optim
    optimizer = torch.optim.AdamW(param_groups(model, recipe), betas=tuple(o.betas), eps=o.eps)
    scheduler = SCHEDULES[o.scheduler](optimizer, round(o.warmup_ratio * total_steps), total_steps)
    state = TrainState()
    resume_from = resolve_resume(recipe.resume, output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    if resume_from is not None and recipe.distributed.strategy == "ddp":
        state = load_checkpoint(resume_from, model, optimizer, scheduler, rank, world)
    # only the model and optimizer go through prepare: the sampler already shards by rank, and a
    # prepared scheduler would step once per process
    ddp_model, optimizer = dist.prepare(accelerator, recipe.distributed, model, optimizer)
    sharded = dist.sharded_state(recipe.distributed, ddp_model, optimizer)  # DeepSpeed, FSDP2
    if resume_from is not None and sharded is not None:  # restored into the sharded weights
        state = load_checkpoint(resume_from, model, optimizer, scheduler, rank, world, sharded)
    unused_image = dist.unused_image_input(recipe.distributed, cache is not None)
    share_prefix = may_share_prefix(recipe, is_main)
    trainable = [p for p in model.parameters() if p.requires_grad]
    content = None
    if recipe.objective == "word_alignment":
        content = content_words(processor.tokenizer).to(accelerator.device)
    if is_main:
        logger.info(
            "%d samples, %d batches/epoch/process, %d process(es), grad_accum %d: %d steps (from step %d)",
            *(len(dataset), sampler.batches_per_epoch, accelerator.num_processes, grad_accum),
            *(total_steps, state.step),
        )

    # a resumed run's log goes on from its checkpoint: the lines of steps after it are cut
    after = state.step if resume_from is not None else None
    metrics = MetricsLogger(output_dir, enabled=is_main, tensorboard=recipe.tensorboard, after_step=after)
    window = StepWindow()
    batches = stream(loader, sampler, state.epoch, state.batch)
    set_train_mode(model, recipe)
    # disable=None: a bar on a terminal only; other processes never draw one
    bar = tqdm(
        total=total_steps, initial=state.step, desc="train", unit="step", disable=None if is_main else True
    )
    losses: list[float] = []
    checkpoints: list[Path] = []

    def hook() -> None:
        if on_step is not None:
            # a hook that generates (the demo's learning curve) runs the layers eagerly: compiled,
            # every new cache length would recompile them
            eager = torch.compiler.set_stance("force_eager") if recipe.compile else contextlib.nullcontext()
            with accelerator.autocast(), eager:
                on_step(state.step, total_steps, model, processor)

    if is_main and resume_from is not None and state.step >= total_steps:
        logger.info(
            "%s already finished: step %d of %d; nothing to train, the final model is saved again from %s",
            output_dir,
            state.step,
            total_steps,
            resume_from.name,
        )
    try:
        if state.step == 0:
            hook()
        while state.step < total_steps:
            micro_batches = []
            while len(micro_batches) < grad_accum:
                state.epoch, state.batch, batch = next(batches)
                inputs = model_inputs(batch, cache, accelerator.device)
                if inputs is not None:
                    micro_batches.append(inputs)
            stats = _step(
                accelerator,
                ddp_model,
                micro_batches,
                optimizer,
                scheduler,
                trainable,
                o.max_grad_norm,
                unused_image,
                content,
                share_prefix,
            )
            state.step += 1
            losses.append(stats["loss"])
            window.add(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            hook()
            if state.step % recipe.log_every == 0 or state.step == total_steps:
                epoch = state.epoch + state.batch / max(sampler.batches_per_epoch, 1)
                metrics.log(state.step, window.record(epoch=epoch))
            if recipe.save_every and state.step % recipe.save_every == 0:
                keep = recipe.keep_checkpoints
                checkpoints.append(
                    save_checkpoint(
                        output_dir, state, model, optimizer, scheduler, accelerator, keep, sharded
                    )
                )
    finally:
        bar.close()
        metrics.close()

    # without accelerate's wrapper on forward (autocast under bf16): a plain model from here on,
    # whole weights gathered (ZeRO-3, FSDP2: onto the main process only, on CPU; None elsewhere)
    model = dist.release_model(accelerator, recipe, ddp_model)
    if model is not None:
        merge_lora(model.eval())  # the saved folder is a plain graft model, whatever the stage
        if recipe.precision == "bf16":
            model.to(torch.bfloat16)  # what a bf16 run is released as (LLaVA's checkpoints are bf16)
    if is_main:
        save_final(model, processor, output_dir)
        logger.info("saved the trained model to %s", output_dir)
    accelerator.wait_for_everyone()
    return TrainResult(
        final_loss=losses[-1] if losses else None,
        steps=state.step,
        output_dir=output_dir,
        losses=losses,
        checkpoints=checkpoints,
        seconds=time.perf_counter() - started,
        processes=accelerator.num_processes,
        model=model,
    )
