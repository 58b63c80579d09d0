"""``graft gen-data``: LLaVA-style instruction data from image contexts, through an OpenAI-compatible API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from graft.cli.app import app, fail

#: exit status of a run that stopped early (rejection rate, max cost, refused mid-run): rerun to resume
STOPPED_EXIT = 3


@app.command("gen-data")
def gen_data_cmd(
    contexts: Annotated[
        Path, typer.Option(help='JSONL of {"id", "image", "captions", "boxes"} (e.g. WORLD/contexts.jsonl).')
    ],
    out: Annotated[Path, typer.Option(help="Output folder: records, cache, report (a rerun resumes).")],
    model: Annotated[str | None, typer.Option(help="Model name (env GRAFT_GEN_MODEL).")] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL (env GRAFT_GEN_BASE_URL / OPENAI_BASE_URL)."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key (env GRAFT_GEN_API_KEY / OPENAI_API_KEY).", show_default=False)
    ] = None,
    types: Annotated[
        str, typer.Option(help="Response types, comma-separated.")
    ] = "conversation,detail,complex_reasoning",
    prompts_dir: Annotated[
        Path | None,
        typer.Option(help="Your own prompt folders (`<dir>/<type>/system_message.txt`, `000_caps.txt` ...)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N contexts.")] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip bad context lines (counted) instead of failing.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seeds the requests and the records' random choices.")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (not sent when unset).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 1024,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute, client side.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute, client side (estimated).")] = None,
    max_retries: Annotated[int, typer.Option(help="Retries of a transient error (429, 5xx, timeout).")] = 5,
    format_retries: Annotated[int, typer.Option(help="New, varied tries after a malformed answer.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 120.0,
    max_reject_rate: Annotated[
        float, typer.Option(help="Stop when more of the last 50 answers are rejected (after 20 answers).")
    ] = 0.5,
    price_in: Annotated[float, typer.Option(help="Price per million prompt tokens.")] = 0.0,
    price_out: Annotated[float, typer.Option(help="Price per million completion tokens.")] = 0.0,
    max_cost: Annotated[
        float | None, typer.Option(help="Stop before a request could pass this cost.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Build every request, estimate tokens and cost, send nothing.")
    ] = False,
) -> None:
    """Generate LLaVA's three kinds of instruction data (conversation, detailed description, complex
    reasoning) from image contexts, through any OpenAI-compatible endpoint, into OUT/{type}.json and
    OUT/llava_instruct.json. Answers are cached (OUT/cache.jsonl): a rerun, after a crash or a stop,
    asks only what is missing."""
    from graft.instruct.gen_report import summary_lines
    from graft.instruct.gen_run import generate
    from graft.instruct.gen_settings import GenError, GenSettings

    settings = GenSettings(
        contexts=contexts,
        out=out,
        model=model,
        base_url=base_url,
        api_key=api_key,
        types=tuple(t.strip() for t in types.split(",") if t.strip()),
        prompts_dir=prompts_dir,
        limit=limit,
        skip_bad=skip_bad,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        max_retries=max_retries,
        format_retries=format_retries,
        timeout_s=timeout,
        max_reject_rate=max_reject_rate,
        price_in=price_in,
        price_out=price_out,
        max_cost=max_cost,
        dry_run=dry_run,
    ).with_env()
    try:
        report = generate(settings)
    except GenError as err:
        fail(str(err))
    if dry_run:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"report: {out / 'report.json'}")
    if report["failures"]:
        typer.secho(
            f"{report['failures']} request(s) failed (see {out / 'failures.jsonl'}); rerun to ask them again",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if report["stopped"]:
        typer.secho(f"stopped: {report['stopped']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=STOPPED_EXIT)
