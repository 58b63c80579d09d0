"""``graft score``: metrics of answers another system produced, as one JSON object on stdout.

Only the annotations are read: no image is looked for or opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import JudgeApiKey, JudgeBaseUrl, JudgeCache, JudgeModel, app, fail


@app.command("score")
def score_cmd(
    task: Annotated[
        str,
        typer.Option(
            help="Benchmark: coco_caption, mme, pope, scienceqa_img, mmbench, llava_bench, demon, or "
            "the path of a task file (.yaml, see docs/tasks.md)."
        ),
    ],
    predictions: Annotated[
        Path,
        typer.Option(help='JSONL of {"id", "prediction"}; for mme also a folder of official result files.'),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The benchmark's files (folder or file, as the task reads them); default: the task "
            "file's dataset_path."
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip malformed records (counted) instead of failing.")
    ] = False,
    samples: Annotated[bool, typer.Option(help="Include per-sample results in the output.")] = False,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeBaseUrl = None,
    judge_api_key: JudgeApiKey = None,
    judge_concurrency: Annotated[int, typer.Option(help="Judge requests in flight at once.")] = 4,
    judge_retries: Annotated[int, typer.Option(help="Retries of a failed judge request.")] = 4,
    judge_cache: JudgeCache = None,
    llm_choice_fallback: Annotated[
        bool, typer.Option(help="Multiple choice: ask the judge model when no option letter is found.")
    ] = False,
    lenient_image_choice: Annotated[
        bool,
        typer.Option(
            help="DEMON image choices: accept 'Image X' anywhere in the answer instead of the "
            "benchmark's rule (reported as accuracy_lenient)."
        ),
    ] = False,
) -> None:
    """Score predictions made elsewhere with graft's reference-equal scorers (no images needed)."""
    from graft.eval.metrics import JudgeConfig
    from graft.eval.score import Options, score
    from graft.eval.tasks import get_task
    from graft.record_files import RecordError

    try:
        spec = get_task(task)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    judge = None
    if judge_model or judge_base_url or spec.needs_judge or llm_choice_fallback:
        judge = JudgeConfig.from_env(
            model=judge_model,
            base_url=judge_base_url,
            api_key=judge_api_key,
            concurrency=judge_concurrency,
            retries=judge_retries,
            cache_dir=judge_cache,
        )
    options = Options(
        judge=judge, llm_choice_fallback=llm_choice_fallback, lenient_image_choice=lenient_image_choice
    )
    try:
        result = score(spec, data, predictions, options, skip_bad=skip_bad, keep_samples=samples)
    except (RecordError, FileNotFoundError, ValueError, KeyError) as err:
        fail(str(err))
    typer.echo(json.dumps(result, indent=None, default=str))
