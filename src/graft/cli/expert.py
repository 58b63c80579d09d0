"""``graft eval-expert``: the expert-model baseline (image -> expert text -> text-only LLM)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import JudgeApiKey, JudgeBaseUrl, JudgeCache, JudgeModel, SampleLimit, app, fail


@app.command("eval-expert")
def eval_expert_cmd(
    describer: Annotated[
        str,
        typer.Option(
            help="The expert: model:DIR (a graft model captions each image), oracle:WORLD (a shapes "
            "world's exact description) or jsonl:FILE ({'image', 'description'} rows)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder: {run}/predictions.jsonl, results.json.")],
    answerer: Annotated[
        Path | None, typer.Option(help="A causal LM folder (with a chat template) that answers.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Or an OpenAI-compatible base URL that answers (http://host:8000/v1).")
    ] = None,
    endpoint_model: Annotated[
        str | None, typer.Option(help="The endpoint's model name (default: the first it lists).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="The endpoint's API key (env GRAFT_EXPERT_API_KEY).")
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(help="A task and its data (repeatable), as in graft eval: NAME=PATH or TASK.yaml."),
    ] = None,
    bench: Annotated[
        Path | None, typer.Option(help="A benchmark folder: run every task its bench.json lists.")
    ] = None,
    caption_prompt: Annotated[
        str, typer.Option(help="What a model: describer is asked about each image.")
    ] = "Describe the image in detail.",
    caption_max_new_tokens: Annotated[int, typer.Option(help="Longest description, in tokens.")] = 128,
    cache: Annotated[
        Path | None,
        typer.Option(help="Descriptions JSONL (default OUT/descriptions.jsonl); reruns reuse it."),
    ] = None,
    limit: SampleLimit = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per answering (and captioning) batch.")] = 16,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Longest answer, in tokens (default: the task's generation_kwargs).")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip (and count) bad records instead of stopping.")] = False,
    bf16: Annotated[bool, typer.Option(help="Run the local models in bfloat16.")] = False,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeBaseUrl = None,
    judge_api_key: JudgeApiKey = None,
    judge_cache: JudgeCache = None,
) -> None:
    """Answer tasks through an expert: each image described in text (cached per image), the
    question answered by a text-only LLM with the descriptions where the images stood. Same
    readers, prompts, scorers and results layout as graft eval ("pipeline": "expert" in
    results.json); graft report on both folders writes expert_comparison.md."""
    from graft.eval.metrics import JudgeConfig
    from graft.eval.runner import read_bench
    from graft.eval.score import Options
    from graft.eval.settings import EvalSettings
    from graft.eval.tasks import get_task
    from graft.pipelines.expert import ExpertSettings, build_pipeline, run_expert_bench, run_expert_task
    from graft.pipelines.expert_answer import EndpointError

    if not task and bench is None:
        fail("give --task NAME=PATH (repeatable) or --bench DIR")
    options = Options(
        judge=JudgeConfig.from_env(
            model=judge_model, base_url=judge_base_url, api_key=judge_api_key, cache_dir=judge_cache
        )
    )
    runs = []
    try:  # every setting, task and path checked before anything loads
        expert = ExpertSettings(
            describer=describer,
            answerer=str(answerer) if answerer else None,
            endpoint=endpoint,
            endpoint_model=endpoint_model,
            api_key=api_key or os.environ.get("GRAFT_EXPERT_API_KEY"),
            caption_prompt=caption_prompt,
            caption_max_new_tokens=caption_max_new_tokens,
            cache=cache,
            bf16=bf16,
        )
        settings = EvalSettings(
            limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, skip_bad=skip_bad
        )
        for item in task or []:
            name, sep, path = item.partition("=")
            spec = get_task(name)
            data = spec.data_path(path or None)
            if not data.exists():
                fail(f"task {spec.name}: data not found: {data}")
            runs.append((spec, data))
        if bench is not None:
            read_bench(bench)
        pipe = build_pipeline(expert, out, batch_size=batch_size)
    except EndpointError as err:
        fail(str(err))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    summary: dict = {}
    try:
        for spec, data in runs:
            try:
                summary[spec.name] = run_expert_task(pipe, spec, data, out, settings, options)["metrics"]
            except (ValueError, FileNotFoundError, KeyError) as err:
                fail(f"task {spec.name}: {err}")
        failed = []
        if bench is not None:
            for run, res in run_expert_bench(pipe, bench, out, settings, options).items():
                summary[run] = res.get("metrics") or {k: res[k] for k in ("skipped", "error") if k in res}
                failed += [run] if "error" in res else []
    except EndpointError as err:
        fail(f"{err} (in {out})")
    typer.echo(json.dumps(summary, indent=2, default=str))
    if failed:
        fail(f"run(s) {failed} failed; the others are in {out}")
