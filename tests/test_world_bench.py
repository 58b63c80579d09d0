"""Held-out benchmark files of the shapes world: every reader reads them, perfect answers score max."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from graft.eval.readers import read_coco_captions, read_demon, read_llava_bench, read_mme, read_pope
from graft.eval.score import Options, score_samples
from graft.world.benchmarks import MME_SUBTASKS, write_benchmarks
from graft.world.build import build_world


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    world = tmp_path_factory.mktemp("world")
    # half the images held out, so 20 test scenes
    build_world(world, num_images=40, seed=1, image_size=32, test_frac=0.5)
    assert (world / "bench" / "bench.json").is_file()  # build_world writes them too
    return world, write_benchmarks(world, seed=1)


def _perfect(read) -> dict[str, str]:
    return {str(s.id): s.target for s in read.samples}


def test_only_test_images(bench: tuple[Path, dict[str, str]]) -> None:
    world, _ = bench
    test_ids = {json.loads(x)["id"] for x in (world / "meta" / "test.jsonl").read_text().splitlines()}
    assert len(test_ids) == 20
    used = {p.stem.removesuffix("_edit") for p in (world / "bench").rglob("*.png")}
    assert used and used <= test_ids


def test_coco_captions(bench: tuple[Path, dict[str, str]]) -> None:
    _, paths = bench
    read = read_coco_captions(paths["coco_caption"])
    assert len(read) == 20 and not read.bad
    assert all(len(s.target) >= 2 for s in read.samples)
    preds = {str(s.id): s.target[0] for s in read.samples}
    out = score_samples("coco_caption", read, preds, Options(java=False))
    assert out["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert out["counts"]["missing"] == 0


def test_mme_pairs(bench: tuple[Path, dict[str, str]]) -> None:
    _, paths = bench
    read = read_mme(paths["mme"])
    assert not read.bad
    by_sub: dict[str, Counter] = {}
    per_image: dict[tuple[str, str], list[str]] = {}
    for s in read.samples:
        by_sub.setdefault(s.meta["subtask"], Counter())[s.target] += 1
        per_image.setdefault((s.meta["subtask"], s.meta["image_name"]), []).append(s.target)
    assert set(by_sub) == set(MME_SUBTASKS)
    assert all(sorted(v) == ["no", "yes"] for v in per_image.values())
    assert by_sub["existence"]["yes"] == 20  # every scene has an existence pair
    out = score_samples("mme", read, _perfect(read))
    for sub in MME_SUBTASKS:
        assert out[sub] == pytest.approx(200.0)
    wrong = {k: ("no" if v == "yes" else "yes") for k, v in _perfect(read).items()}
    assert score_samples("mme", read, wrong)["existence"] == 0.0


def test_pope_splits(bench: tuple[Path, dict[str, str]]) -> None:
    _, paths = bench
    read = read_pope(paths["pope"])
    assert not read.bad
    labels: dict[str, Counter] = {}
    for s in read.samples:
        labels.setdefault(s.meta["split"], Counter())[s.target] += 1
    assert set(labels) == {"random", "popular", "adversarial"}
    for c in labels.values():
        assert c["yes"] == c["no"] > 0
    out = score_samples("pope", read, _perfect(read))
    for split in labels:
        assert out[split]["accuracy"] == 1.0 and out[split]["yes_ratio"] == 0.5
    always_yes = {str(s.id): "yes" for s in read.samples}
    assert score_samples("pope", read, always_yes)["random"]["accuracy"] == 0.5


def test_pope_negatives_follow_definitions(bench: tuple[Path, dict[str, str]]) -> None:
    world, paths = bench
    read = read_pope(paths["pope"])
    scenes = [json.loads(x) for x in (world / "meta" / "test.jsonl").read_text().splitlines()]
    present = {r["id"]: {f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]} for r in scenes}
    negs: dict[str, Counter] = {}
    for s in read.samples:
        cat = s.meta["question"].removeprefix("Is there a ").removesuffix(" in the image?")
        assert (cat in present[s.images[0].stem]) == (s.target == "yes"), s.where
        if s.target == "no":
            negs.setdefault(s.meta["split"], Counter())[s.meta["question"]] += 1
    # popular and adversarial draw from a few categories; random spreads wider
    assert len(negs["popular"]) < len(negs["random"])
    assert len(negs["adversarial"]) < len(negs["random"])


def test_llava_bench(bench: tuple[Path, dict[str, str]]) -> None:
    _, paths = bench
    read = read_llava_bench(paths["llava_bench"])
    assert not read.bad and len(read) == 60
    assert Counter(s.meta["category"] for s in read.samples) == {"conv": 20, "detail": 20, "complex": 20}
    assert all(s.target and s.meta["context"] for s in read.samples)


def test_demon(bench: tuple[Path, dict[str, str]]) -> None:
    _, paths = bench
    read = read_demon(paths["demon"])
    assert not read.bad and len(read) > 0
    assert all(len(s.images) >= 2 for s in read.samples)
    out = score_samples("demon", read, _perfect(read))
    for task, value in out["tasks"].items():
        assert value == pytest.approx(100.0), task
    assert {s.meta["kind"] for s in read.samples} == {"image-choice", "open-ended"}


def test_idempotent_and_cheap(bench: tuple[Path, dict[str, str]]) -> None:
    world, paths = bench
    before = (world / "bench" / "bench.json").stat().st_mtime_ns
    t = time.perf_counter()
    assert write_benchmarks(world, seed=1) == paths
    assert time.perf_counter() - t < 0.5
    assert (world / "bench" / "bench.json").stat().st_mtime_ns == before


def test_tiny_and_rebuilt_worlds(tmp_path: Path) -> None:
    build_world(tmp_path / "empty", num_images=2, image_size=32)  # too small for a test split
    assert write_benchmarks(tmp_path / "empty") == {}
    world = tmp_path / "one"
    build_world(world, num_images=3, seed=0, image_size=32)  # one test image
    paths = write_benchmarks(world)
    assert len(read_coco_captions(paths["coco_caption"])) == 1
    assert {s.meta["task"] for s in read_demon(paths["demon"])} == {"Shapes_Difference"}
    first = json.loads((world / "bench" / "bench.json").read_text())["test_hash"]
    # rebuilt in place with other args: the stale benchmark files are replaced, not reused
    build_world(world, num_images=3, seed=5, image_size=32)
    assert json.loads((world / "bench" / "bench.json").read_text())["test_hash"] != first
    test_id = json.loads((world / "meta" / "test.jsonl").read_text())["id"]
    assert [p.stem for p in (world / "bench" / "coco" / "images").iterdir()] == [test_id]


def test_run_task_on_every_offline_benchmark(bench: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """`graft eval`'s runner reads, answers and scores each file (LLaVA-Bench needs a judge)."""
    import torch

    from graft.eval.runner import run_task

    from tiny import tiny_model_and_processor

    torch.set_num_threads(1)
    _, paths = bench
    model, processor = tiny_model_and_processor()
    for task in ("coco_caption", "mme", "pope", "demon"):
        res = run_task(
            model,
            processor,
            task,
            paths[task],
            tmp_path,
            limit=4,
            max_new_tokens=2,
            options=Options(java=False),  # Java's METEOR takes seconds to start
            progress=False,
        )
        assert res["metrics"]["counts"]["samples"] == 4 and res["metrics"]["counts"]["missing"] == 0, task
