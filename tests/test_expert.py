"""The expert-model baseline: image -> expert text -> text-only LLM, through the eval runner's
readers, prompts, scorers and layout; descriptions cached per image; an endpoint that is down is a
clear error that loses nothing."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

import graft.cli.expert  # noqa: F401  (registers graft eval-expert)
from graft.cli import app
from graft.eval.runner import run_task
from graft.eval.score import Options
from graft.pipelines.expert import (
    ExpertPipeline,
    ExpertSettings,
    build_pipeline,
    run_expert_bench,
    run_expert_task,
)
from graft.pipelines.expert_answer import (
    Answer,
    EndpointAnswerer,
    EndpointError,
    LocalAnswerer,
    with_descriptions,
)
from graft.pipelines.expert_describe import (
    DescriberError,
    Description,
    DescriptionCache,
    JsonlDescriber,
    ModelDescriber,
    OracleDescriber,
)
from graft.report.build import build_report

from asgi_thread import free_port, serve_in_thread
from tiny import random_image, tiny_llm, tiny_model_and_processor, tiny_tokenizer, write_jsonl, write_pope

torch.set_num_threads(1)


class Recording:
    """An answerer that keeps every prompt and answers 'yes'."""

    id = "fake:recording"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def answer(self, prompts, max_new_tokens):  # noqa: ANN001, ANN201
        self.prompts += prompts
        return [Answer("yes", 0.01, len(p.split()), 1) for p in prompts]


class Counting:
    """A describer that says which file it saw, and counts what it was asked."""

    id = "fake:counting"

    def __init__(self) -> None:
        self.asked: list[Path] = []

    def describe(self, images):  # noqa: ANN001, ANN201
        self.asked += images
        return [Description(f"picture {Path(p).stem}", 0.5, 10, 3) for p in images]


def save_text_model(directory: Path) -> Path:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tokenizer.save_pretrained(directory)
    tiny_llm(len(tokenizer)).save_pretrained(directory)
    return directory


def pair_task(root: Path) -> Path:
    """A two-image task whose prompt puts the second image first ({image#k})."""
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        (root / "img").mkdir(parents=True, exist_ok=True)
        random_image(seed).save(root / "img" / f"{name}.png")
    rows = [
        {"id": "p1", "images": ["img/a.png", "img/b.png"], "q": "Is {image#2} like {image#1}?", "a": "yes"},
        {"id": "p2", "images": ["img/c.png", "img/a.png"], "q": "Is {image#1} like {image#2}?", "a": "no"},
    ]
    write_jsonl(root / "pairs.jsonl", rows)
    (root / "pairs.yaml").write_text(
        textwrap.dedent("""\
        task: pairs
        reader: jsonl
        doc_to_visual: images
        doc_to_text: "{{q}}"
        doc_to_target: a
        generation_kwargs: {max_new_tokens: 3}
        metric_list: [exact_match]
        """)
    )
    write_jsonl(
        root / "descriptions.jsonl",
        [{"image": f"img/{n}.png", "description": f"desc of {n}"} for n in "abc"],
    )
    return root


def test_descriptions_replace_the_markers_in_order():
    text = with_descriptions("<image> then <image>: same?", "<image>", ["one", "two"])
    assert text == "Image 1: one then Image 2: two: same?"
    labelled = with_descriptions("Image A: <image>\nImage B: <image>\nWhich?", "<image>", ["one", "two"])
    assert labelled == "Image A: one\nImage B: two\nWhich?"  # the prompt's own labels are kept
    with pytest.raises(ValueError, match="2 image markers but 1"):
        with_descriptions("<image><image>", "<image>", ["x"])


def test_multi_image_prompts_hold_each_description_where_its_image_was(tmp_path):
    root = pair_task(tmp_path / "task")
    answerer = Recording()
    cache = DescriptionCache(tmp_path / "out" / "descriptions.jsonl")
    pipe = ExpertPipeline(JsonlDescriber(root / "descriptions.jsonl"), answerer, cache)
    res = run_expert_task(pipe, root / "pairs.yaml", root / "pairs.jsonl", tmp_path / "out")
    assert answerer.prompts == [
        "Is Image 1: desc of b like Image 2: desc of a?",
        "Is Image 1: desc of c like Image 2: desc of a?",
    ]
    folder = tmp_path / "out" / "pairs"
    assert {p.name for p in folder.iterdir()} >= {"questions.jsonl", "predictions.jsonl", "results.json"}
    logged = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in logged] == answerer.prompts and logged[0]["prediction"] == "yes"
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["pipeline"] == "expert" and on_disk["describer"].startswith("jsonl:")
    assert on_disk["answerer"] == "fake:recording" and res["metrics"]["exact_match"] == 0.5
    assert on_disk["cost"]["calls_per_sample"] == 2 and on_disk["cost"]["samples_timed"] == 2


def test_descriptions_are_cached_and_a_rerun_reuses_them(tmp_path):
    root = pair_task(tmp_path / "task")
    describer, cache_path = Counting(), tmp_path / "cache.jsonl"
    pipe = ExpertPipeline(describer, Recording(), DescriptionCache(cache_path))
    run_expert_task(pipe, root / "pairs.yaml", root / "pairs.jsonl", tmp_path / "one")
    assert sorted(p.name for p in describer.asked) == ["a.png", "b.png", "c.png"]  # a once, for both
    rows = [json.loads(line) for line in cache_path.read_text().splitlines()]
    assert len(rows) == 3 and {r["describer"] for r in rows} == {"fake:counting"}
    # a torn last line (a run killed mid-write) is dropped; the complete rows are reused
    with cache_path.open("a") as f:
        f.write('{"image_sha256": "ab')
    describer.asked.clear()
    again = ExpertPipeline(describer, Recording(), DescriptionCache(cache_path))
    res = run_expert_task(again, root / "pairs.yaml", root / "pairs.jsonl", tmp_path / "two")
    assert describer.asked == [] and cache_path.read_text().endswith("}\n")
    assert res["cost"]["describe_seconds_per_sample"] == pytest.approx(1.5 / 2)  # 3 images, 2 samples
    # another describer is another key: described anew, beside the first
    other = Counting()
    other.id = "fake:other"
    run_expert_task(
        ExpertPipeline(other, Recording(), DescriptionCache(cache_path)),
        root / "pairs.yaml",
        root / "pairs.jsonl",
        tmp_path / "three",
    )
    assert len(other.asked) == 3 and len(cache_path.read_text().splitlines()) == 6


def test_a_graft_captioner_and_a_local_text_llm_answer_pope(tmp_path):
    data = write_pope(tmp_path / "pope", n=3)
    model, processor = tiny_model_and_processor()
    describer = ModelDescriber(model, processor, "Describe the image.", max_new_tokens=4)
    answerer = LocalAnswerer(save_text_model(tmp_path / "llm"), device="cpu")
    pipe = ExpertPipeline(describer, answerer, DescriptionCache(tmp_path / "out" / "descriptions.jsonl"))
    res = run_expert_task(pipe, "pope", data, tmp_path / "out", max_new_tokens=3)
    assert res["prediction_counts"]["written"] == 3 and "random" in res["metrics"]
    assert res["describer"].startswith("model:") and res["answerer"].startswith("local:llm:")
    cached = [json.loads(line) for line in (tmp_path / "out" / "descriptions.jsonl").read_text().splitlines()]
    assert len(cached) == 3 and all(r["prompt_tokens"] > processor.image_seq_length for r in cached)
    cost = res["cost"]
    assert cost["answer_tokens_per_sample"] > 0 and cost["describe_tokens_per_sample"] > 0
    assert cost["seconds_per_sample"] > 0
    # the end-to-end run records its cost the same way
    e2e = run_task(model, processor, "pope", data, tmp_path / "e2e", max_new_tokens=3, progress=False)
    assert e2e["pipeline"] == "end-to-end" and e2e["cost"]["calls_per_sample"] == 1
    assert e2e["cost"]["prompt_tokens_per_sample"] > processor.image_seq_length


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from graft.world.build import build_world

    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, num_images=40, seed=0)
    return out


def test_the_oracle_describes_a_world_image_exactly_and_refuses_others(world, tmp_path):
    row = json.loads((world / "meta" / "test.jsonl").read_text().splitlines()[0])
    (desc,) = OracleDescriber(world).describe([world / row["image"]])
    text = desc.text
    for obj in row["scene"]["objects"]:
        assert f"{obj['color']} {obj['shape']}" in text
    random_image(0).save(tmp_path / "x.png")
    with pytest.raises(DescriberError, match="not an image of the shapes world"):
        OracleDescriber(world).describe([tmp_path / "x.png"])


def test_a_render_no_metadata_names_is_read_back_from_its_pixels(world):
    from graft.world.read_scene import scene_from_render
    from graft.world.scene import Scene

    rows = [json.loads(line) for line in (world / "meta" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        read = scene_from_render(scene.render())
        assert read is not None, row["id"]
        key = lambda o: (o.color, o.shape, o.size)  # noqa: E731
        assert sorted(map(key, read.objects)) == sorted(map(key, scene.objects)), row["id"]
        for obj in scene.objects:
            near = min(read.objects, key=lambda o: abs(o.x - obj.x) + abs(o.y - obj.y))
            assert abs(near.x - obj.x) <= 1 / 64 and abs(near.y - obj.y) <= 1 / 64
    assert scene_from_render(random_image(0)) is None
    edited = sorted((world / "bench" / "demon").rglob("*_edit.png"))[:3]
    assert edited and all(OracleDescriber(world).describe(edited))


def test_the_report_shows_end_to_end_model_expert_and_oracle_side_by_side(world, tmp_path):
    model, processor = tiny_model_and_processor()
    bench = world / "bench"
    run_task(
        model, processor, "pope", bench / "pope", tmp_path / "e2e", limit=3, max_new_tokens=2, progress=False
    )
    experts = {
        "model": ModelDescriber(model, processor, "Describe the image.", max_new_tokens=3),
        "oracle": OracleDescriber(world),
    }
    for name, describer in experts.items():
        pipe = ExpertPipeline(
            describer, Recording(), DescriptionCache(tmp_path / name / "descriptions.jsonl")
        )
        res = run_expert_bench(pipe, bench, tmp_path / name, options=Options(java=False), limit=4)
        assert "metrics" in res["pope"]
    prompt = json.loads((tmp_path / "oracle" / "pope" / "predictions.jsonl").read_text().splitlines()[0])[
        "prompt"
    ]
    assert prompt.startswith("Image 1: The image shows") and "Boxes" in prompt
    build_report([tmp_path / "e2e", tmp_path / "model", tmp_path / "oracle"], tmp_path / "report")
    md = (tmp_path / "report" / "expert_comparison.md").read_text()
    assert "| end-to-end |" in md and "| expert (model) |" in md and "| expert (oracle) |" in md
    assert "s/sample" in md and "tokens/sample" in md and "perception gap" in md


class FakeOpenAI:
    """/v1/models and /v1/chat/completions; answers 'yes' until ``fail_after`` requests, then 500."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after, self.asked = fail_after, []

    def app(self) -> Starlette:
        async def models(request: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": "text-llm", "object": "model"}]})

        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=500)
            self.asked.append(body["messages"][-1]["content"])
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "yes"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
                }
            )

        return Starlette(
            routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
        )


def test_an_endpoint_answers_and_one_failing_mid_run_loses_nothing(tmp_path):
    root = pair_task(tmp_path / "task")
    flaky = FakeOpenAI(fail_after=1)
    settings = ExpertSettings(describer=f"jsonl:{root / 'descriptions.jsonl'}", endpoint="unused")
    with serve_in_thread(flaky.app()) as url:
        pipe = build_pipeline(
            settings, tmp_path / "out", answerer=EndpointAnswerer(f"{url}/v1", max_retries=0)
        )
        assert pipe.answerer.id == f"endpoint:{url}/v1#text-llm"
        with pytest.raises(EndpointError, match=f"{url}/v1 failed"):
            run_expert_task(pipe, root / "pairs.yaml", root / "pairs.jsonl", tmp_path / "out")
        # one batch of two: the answer given before the failure is on disk
        preds = tmp_path / "out" / "pairs" / "predictions.jsonl"
        assert [json.loads(line)["id"] for line in preds.read_text().splitlines()] == ["p1"]
        assert len((tmp_path / "out" / "descriptions.jsonl").read_text().splitlines()) == 3
        flaky.fail_after = None  # back up: the rerun asks only what is missing
        res = run_expert_task(pipe, root / "pairs.yaml", root / "pairs.jsonl", tmp_path / "out", batch_size=1)
    assert flaky.asked == [
        "Is Image 1: desc of b like Image 2: desc of a?",
        "Is Image 1: desc of c like Image 2: desc of a?",
    ]
    assert res["prediction_counts"] == {"total": 2, "already_done": 1, "written": 1, "bad": 0}
    assert res["cost"]["answer_tokens_per_sample"] == 8


def test_graft_eval_expert_through_an_endpoint_and_a_clear_error_when_it_is_down(tmp_path):
    root = pair_task(tmp_path / "task")
    args = [
        "eval-expert",
        "--describer", f"jsonl:{root / 'descriptions.jsonl'}",
        "--task", f"{root / 'pairs.yaml'}={root / 'pairs.jsonl'}",
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    server = FakeOpenAI()
    with serve_in_thread(server.app()) as url:
        ok = CliRunner().invoke(app, [*args, "--endpoint", f"{url}/v1"])
    assert ok.exit_code == 0, ok.output
    assert (
        json.loads(ok.stdout[ok.stdout.index("{") :])["pairs"]["exact_match"] == 0.5
        and len(server.asked) == 2
    )
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    down = f"http://127.0.0.1:{free_port()}/v1"
    res = CliRunner().invoke(app, [*args, "--endpoint", down])
    assert res.exit_code == 2 and down in res.output and "not answering" in res.output
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    bad = CliRunner().invoke(app, [*args])
    assert bad.exit_code == 2 and "give one answerer" in bad.output


def test_a_down_endpoint_names_only_flags_that_eval_expert_has():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match="not answering") as err:
        EndpointAnswerer(down, max_retries=0, timeout=5)
    named = set(re.findall(r"--[a-z][a-z-]*", str(err.value)))
    command = typer.main.get_command(app).commands["eval-expert"]
    assert named and named <= {opt for param in command.params for opt in param.opts}


def test_graft_eval_expert_with_a_graft_captioner_and_a_local_llm_resumes_from_its_cache(tmp_path):
    model, processor = tiny_model_and_processor()
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    data = write_pope(tmp_path / "pope", n=2)
    args = [
        "eval-expert",
        "--describer", f"model:{tmp_path / 'vlm'}",
        "--answerer", str(save_text_model(tmp_path / "llm")),
        "--task", f"pope={data}",
        "--out", str(tmp_path / "out"),
        "--caption-max-new-tokens", "3",
        "--max-new-tokens", "2",
    ]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    cache = tmp_path / "out" / "descriptions.jsonl"
    described = cache.read_text()
    assert len(described.splitlines()) == 2
    (tmp_path / "out" / "pope" / "predictions.jsonl").unlink()  # answered anew, described from the cache
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert cache.read_text() == described
    results = json.loads((tmp_path / "out" / "pope" / "results.json").read_text())
    assert results["pipeline"] == "expert" and results["prediction_counts"]["written"] == 2
    assert results["cost"]["samples_timed"] == 2  # the answers deleted took their cost with them
