"""``graft plan``: the memory and time estimates against the ZeRO paper, DeepSpeed's estimators and
LLaVA-1.5's published training times; the CLI's table and its errors. Offline: the 7B models are
built on the meta device from graft's table of known architectures."""

import json

import pytest
import torch
from typer.testing import CliRunner

import graft.cli.plan  # noqa: F401  (registers the verb)
from graft.cli import app
from graft.train.plan import PlanError, PlanSettings, make_plan, parse_memory
from graft.train.plan_memory import activation_bytes, model_states, weights_and_states
from graft.train.plan_model import ModelShape, model_shape
from graft.train.plan_time import flops_per_sample, tokens_from_data
from graft.train.recipe import load_recipe

torch.set_num_threads(1)
GB = 1e9
PLAN = ["plan", "llava-1.5-7b-stage2", "--gpus", "8", "--gpu-memory", "80GB"]


@pytest.fixture(scope="module")
def shapes() -> dict[str, ModelShape]:
    return {stage: model_shape(load_recipe(f"llava-1.5-7b-{stage}")) for stage in ("stage1", "stage2")}


def test_the_zero_papers_7_5b_parameters_on_64_gpus():
    # Rajbhandari et al. 2020, figure 1: Psi = 7.5B, N_d = 64, K = 12
    got = [model_states(7.5e9, 64, stage) / GB for stage in (0, 1, 2, 3)]
    assert got == pytest.approx([120, 31.4, 16.6, 1.9], abs=0.05)


def test_deepspeeds_own_estimators_differ_only_by_what_they_add():
    stage2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    params, largest, gpus = 7.5e9, 2e8, 8
    _, ds2 = stage2.estimate_zero2_model_states_mem_needs(params, gpus, 1, cpu_offload=False)
    _, ds2_off = stage2.estimate_zero2_model_states_mem_needs(params, gpus, 1, cpu_offload=True)
    # DeepSpeed's ZeRO-2 counts an fp32 gradient shard (4 Psi / N) beside the ZeRO paper's 14 Psi / N
    assert ds2 == pytest.approx(model_states(params, gpus, 2) + 4 * params / gpus, rel=1e-6)
    assert ds2_off == pytest.approx(weights_and_states("zero2+offload", params, 0, gpus, 0, 0)["states"])
    _, ds3, _ = stage3.estimate_zero3_model_states_mem_needs(
        params, largest, gpus, 1, cpu_offload=False, cpu_offload_params=False
    )
    _, ds3_off, _ = stage3.estimate_zero3_model_states_mem_needs(params, largest, gpus, 1)
    ours = weights_and_states("zero3", params, 0, gpus, largest, largest)
    # 18 bytes per sharded parameter there (an fp32 gradient shard), one live layer instead of two
    assert ds3 == pytest.approx(ours["states"] + 2 * params / gpus + ours["gathered"] / 2, rel=1e-6)
    ours_off = weights_and_states("zero3+offload", params, 0, gpus, largest, largest)
    assert ds3_off == pytest.approx(ours_off["gathered"] / 2)


def test_activations_follow_korthikanti_et_al():
    s, b, h, a, layers = 2048, 1, 4096, 32, 32
    plain = activation_bytes(s, b, h, a, layers, checkpointing=False, fused_attention=False)
    assert plain == s * b * h * (34 + 5 * a * s / h) * layers
    fused = activation_bytes(s, b, h, a, layers, checkpointing=False, fused_attention=True)
    assert fused == 34 * s * b * h * layers
    ckpt = activation_bytes(s, b, h, a, layers, checkpointing=True, fused_attention=True)
    assert ckpt == 2 * s * b * h * layers + 34 * s * b * h  # inputs kept + one layer recomputed


def test_flops_count_6x_what_learns_4x_frozen_on_the_path_2x_forward_only():
    shape = ModelShape(
        components={},
        roles={
            "vision": {"trainable": 0, "on_path": 0, "forward": 100},
            "connector": {"trainable": 10, "on_path": 0, "forward": 0},
            "llm": {"trainable": 0, "on_path": 1000, "forward": 0},
        },
        hidden=8, layers=2, heads=1, vocab=10, vision_seq=5, llm_layers_on_path=2,
    )  # fmt: skip
    flops = flops_per_sample(shape, tokens=20, images=1, checkpointing=False)
    assert flops["vision"] == 2 * 100 * 5 and flops["connector"] == 6 * 10 * 5
    assert flops["llm"] == 4 * 1000 * 20 and flops["attention"] == 3 * 2 * 2 * 20 * 8 * 20
    recomputed = flops_per_sample(shape, tokens=20, images=1, checkpointing=True)
    assert recomputed["llm"] == 6 * 1000 * 20 and recomputed["vision"] == flops["vision"]


def test_word_alignment_runs_no_llm_but_meets_the_embedding_table(shapes):
    shape, recipe = shapes["stage1"], load_recipe("llava-1.5-7b-stage1")
    ckpt = recipe.gradient_checkpointing
    flops = flops_per_sample(shape, tokens=600, images=1, checkpointing=ckpt, word_alignment=True)
    lm = flops_per_sample(shape, tokens=600, images=1, checkpointing=ckpt)
    assert flops["llm"] == flops["attention"] == 0 and flops["vision"] == lm["vision"]
    assert flops["alignment"] == 6 * 576 * 32000 * 4096 and flops["connector"] == lm["connector"]
    settings = PlanSettings(gpus=8, gpu_memory=80 * GB, samples=1000, tokens_per_sample=600)
    aligned = make_plan(load_recipe("llava-1.5-7b-stage1", {"objective": "word_alignment"}), settings, shape)
    plain = make_plan(recipe, settings, shape)
    assert aligned.flops == pytest.approx(sum(flops.values()) * 1000) and aligned.flops < plain.flops
    memory, before = aligned.strategies[0].memory, plain.strategies[0].memory
    assert memory.activations < before.activations and memory.logits > 0


def test_llava_1_5_7b_published_training_times_within_35_percent(shapes):
    # LLaVA README (haotian-liu/LLaVA, "Train"): pretraining ~3.5 h on 8x A100 (80G), visual
    # instruction tuning ~10 h on 8x A100 (40G); same 312 TFLOPS either way.
    # Stage 1: 558,128 image-caption pairs: 576 image tokens + ~20 text (a ~10-word BLIP caption,
    # BOS, EOS). Stage 2: 665,298 conversations, 40K of them text-only ShareGPT: 576 x 625/665
    # image tokens + ~300 text tokens (multi-turn VQA, LLaVA-Instruct, ShareGPT, system prompt).
    cases = {"stage1": (558_128, 576 + 20, 3.5), "stage2": (665_298, 576 * 625 / 665 + 300, 10.0)}
    for stage, (samples, per_sample, published) in cases.items():
        settings = PlanSettings(gpus=8, gpu_memory=80 * GB, samples=samples, tokens_per_sample=per_sample)
        plan = make_plan(load_recipe(f"llava-1.5-7b-{stage}"), settings, shapes[stage])
        assert plan.hours == pytest.approx(published, rel=0.35), (stage, plan.hours)
    assert shapes["stage1"].trainable == 20_979_712  # the mlp2x_gelu projector, 1024 -> 4096 -> 4096
    assert shapes["stage2"].roles["llm"]["trainable"] == 6_738_415_616 - 32000 * 4096  # minus embeddings


def test_the_smallest_strategy_that_fits_and_its_batch(shapes):
    recipe = load_recipe("llava-1.5-7b-stage2")
    plan = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=80 * GB), shapes["stage2"])
    rows = {row.strategy: row for row in plan.strategies}
    # graft's DDP: the paper's 16 bytes (fp32 weight and gradient, Adam) + the reducer's gradient buckets
    assert not rows["ddp"].fits and rows["ddp"].memory.states == pytest.approx(20 * 6_759_395_328)
    assert plan.best is rows["zero2"]
    assert all(r.micro_batch * r.grad_accum * 8 == 128 for r in plan.strategies)
    assert plan.hours is None  # no sample count: no data here and none given
    # smaller GPUs: a smaller micro-batch with more accumulation, then more sharding
    small = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=40 * GB), shapes["stage2"])
    assert small.best is not None and small.best.strategy == "zero2" and small.best.grad_accum > 1
    smaller = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=24 * GB), shapes["stage2"])
    assert smaller.best is not None and smaller.best.strategy == "zero3"
    fp32 = load_recipe("llava-1.5-7b-stage2", {"precision": "fp32"})
    wide = make_plan(fp32, PlanSettings(gpus=8, gpu_memory=80 * GB), shapes["stage2"]).strategies[0].memory
    assert wide.frozen == 2 * rows["ddp"].memory.frozen  # fp32: 4-byte frozen weights and activations
    assert wide.activations == pytest.approx(2 * rows["ddp"].memory.activations)
    tiny = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=4 * GB), shapes["stage2"])
    assert tiny.best is None and all(r.micro_batch == 1 for r in tiny.strategies)


def test_the_advice_is_a_strategy_graft_runs_and_ddp_counts_its_gradient_buckets(shapes):
    recipe = load_recipe("llava-1.5-7b-stage2")
    # one 80 GB GPU: DDP with a CPU optimizer fits, but graft has no such strategy; the advice is the
    # first row graft runs (ZeRO-3 with offload), and the table says which rows it cannot run
    one = make_plan(recipe, PlanSettings(gpus=1, gpu_memory=80 * GB), shapes["stage2"])
    rows = {row.strategy: row for row in one.strategies}
    assert rows["ddp+offload"].fits and rows["ddp+offload"].graft is None
    assert one.best is rows["zero3+offload"] and one.best.graft == "zero3_offload"
    assert one.to_dict()["best"] == "zero3+offload"
    # 8 x H200 141 GB: 16 bytes per parameter would fit DDP (108 GB of states), but graft's DDP also
    # keeps the reducer's fp32 gradient buckets (27 GB more): ZeRO-2
    h200 = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=141 * GB, gpu_type="H200"), shapes["stage2"])
    assert not h200.strategies[0].fits and h200.best is not None and h200.best.graft == "zero2"
    result = CliRunner().invoke(app, [*PLAN[:3], "1", *PLAN[4:]])
    assert result.exit_code == 0, result.output
    assert "--set distributed.strategy=zero3_offload --set batch_size=" in result.output
    assert "zero3|fsdp2" in result.output


def test_lora_fits_under_ddp_as_the_recipe_says():
    recipe = load_recipe("llava-1.5-7b-stage2", {"llm.mode": "lora", "llm.lr": 2e-4})
    plan = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=80 * GB))
    assert plan.shape.lora == 319_815_680  # r 128 on every linear layer of Vicuna-7B
    assert plan.best is not None and plan.best.strategy == "ddp"


def test_token_counts_from_a_llava_sample(tmp_path, shapes):
    records = [
        {"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\n" + "x" * 40},
                                             {"from": "gpt", "value": "y" * 400}]},
        {"conversations": [{"from": "human", "value": "z" * 80}, {"from": "gpt", "value": "w" * 80}]},
    ]  # fmt: skip
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(records))
    tokens = tokens_from_data(path, image_tokens=576, max_length=2048)
    assert tokens.samples == 2 and tokens.images_per_sample == 0.5
    assert tokens.tokens_per_sample == pytest.approx(((441 / 4 + 576) + 160 / 4) / 2, abs=0.5)
    assert tokens.max_tokens == int(441 / 4 + 576) + 1 and tokens.max_supervised == 101
    (tmp_path / "sample.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert (
        tokens_from_data(tmp_path / "sample.jsonl", 576, 2048).tokens_per_sample == tokens.tokens_per_sample
    )
    recipe = load_recipe("llava-1.5-7b-stage2")
    sample = make_plan(recipe, PlanSettings(gpus=8, gpu_memory=80 * GB, data=str(path)), shapes["stage2"])
    scaled = PlanSettings(gpus=8, gpu_memory=80 * GB, data=str(path), samples=2000)
    full = make_plan(recipe, scaled, shapes["stage2"])
    assert full.hours == pytest.approx(1000 * sample.hours)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json:1: not valid JSON"):
        tokens_from_data(tmp_path / "bad.json", 576, 2048)
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{"id": 2}\n{"id": 3}\n{"id": "broken", "image": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:4: not valid JSON \(Expecting value at column 27\)"):
        tokens_from_data(tmp_path / "bad.jsonl", 576, 2048)
    (tmp_path / "list.json").write_text('[{"id": 1},\n{"id": 2},\n{"id": }]')
    with pytest.raises(ValueError, match=r"list.json:3: not valid JSON"):
        tokens_from_data(tmp_path / "list.json", 576, 2048)


def test_the_cli_prints_the_table_and_json():
    result = CliRunner().invoke(app, [*PLAN, "--samples", "665298", "--tokens-per-sample", "841"])
    assert result.exit_code == 0, result.output
    for text in ("DDP", "ZeRO-2", "ZeRO-3 / FSDP2", "CPU offload", "activations", "logits", "micro x accum"):
        assert text in result.output
    assert "smallest that fits: ZeRO-2, micro-batch 16 x accumulation 1 x 8 GPUs = 128" in result.output
    as_json = CliRunner().invoke(app, [*PLAN, "--gpu-type", "h100", "--json"])
    assert as_json.exit_code == 0, as_json.output
    plan = json.loads(as_json.stdout)
    assert plan["best"] == "zero2" and plan["settings"]["gpu_type"] == "H100" and plan["hours"] is None
    assert plan["tokens"]["upper_bound"] is True


def test_bad_input_is_a_clear_error():
    runner = CliRunner()
    cases = {
        ("--gpu-type", "V100"): "unknown GPU type 'V100'; known: A100, H100, H200",
        ("--gpu-memory", "80 gigs"): "cannot read GPU memory '80 gigs'",
        ("--gpus", "0"): "--gpus must be at least 1",
        ("--gpus", "3"): "global_batch_size 128 is not a multiple of 3 GPUs",
        ("--mfu", "40"): "--mfu is a fraction",
        ("--gpu-memory", "abc"): "--gpu-memory: cannot read GPU memory 'abc'",
        ("--samples", "0"): "--samples must be positive",
        ("--tokens-per-sample", "0"): "--tokens-per-sample must be positive",
        ("--seq-len", "100"): "--seq-len 100: the longest sample holds an image, 576 tokens",
    }
    for (option, value), message in cases.items():
        args = list(PLAN)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (option, result.output)
    assert parse_memory("80GB") == 80e9 and parse_memory("141 GiB") == 141 * 2**30
    # a recipe whose backbone folders are not built yet: named as missing folders, not as bad hub ids
    missing = ["plan", "shapes-tiny-stage1", "--gpus", "1", "--gpu-memory", "9GB", "--set"]
    missing += ["model.vision=/nonexistent/vision", "--set", "model.llm=/nonexistent/llm"]
    result = runner.invoke(app, missing)
    assert result.exit_code == 2 and "model.llm='/nonexistent/llm': no such folder" in result.output
    with pytest.raises(PlanError):
        parse_memory("-3GB")
