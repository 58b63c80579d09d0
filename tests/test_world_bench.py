"""Held-out benchmark files of the shapes world: every reader reads them, the answers are true of
the scenes, perfect answers score max and wrong ones less."""

from __future__ import annotations

import base64
import csv
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from graft.eval.readers import (
    read_coco_captions,
    read_demon,
    read_llava_bench,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
)
from graft.eval.score import Options, score_samples
from graft.world.bench_choice import MMBENCH_COLUMNS
from graft.world.benchmarks import BENCH_VERSION, MME_SUBTASKS, write_benchmarks
from graft.world.build import build_world
from graft.world.describe import join, number_word
from graft.world.questions import FAMILIES, REL_PHRASE, refer, relation
from graft.world.scene import Scene

# the tasks graft.eval registers (score.py); each manifest run names one of them
REGISTERED = {"coco_caption", "mme", "pope", "scienceqa_img", "mmbench", "llava_bench", "demon"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    world = tmp_path_factory.mktemp("world")
    # half the images held out, so 20 test scenes
    build_world(world, num_images=40, seed=1, image_size=32, test_frac=0.5)
    assert (world / "bench" / "bench.json").is_file()  # build_world writes them too
    return world, write_benchmarks(world, seed=1)


def _path(bench: tuple[Path, dict], run: str) -> str:
    return bench[1][run]["path"]


def _perfect(read) -> dict[str, str]:
    return {str(s.id): s.target for s in read.samples}


def _scenes(world: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (world / "meta" / "test.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


def _true_options(scene: Scene, stem: str, choices: list[str]) -> list[str]:
    """The options that are true of the scene, worked out from its objects, not the generator."""
    objs = scene.objects

    def named(ref: str):  # noqa: ANN202
        found = [o for o in objs if refer(scene, o) == ref]
        assert len(found) == 1, (stem, ref)
        return found[0]

    if stem == "Which of these objects is in the image?":
        return [c for c in choices if c in {o.category for o in objs}]
    if m := re.fullmatch(r"What (color|shape) is the (.+)\?", stem):
        o = named(m.group(2))
        return [c for c in choices if c == (o.color if m.group(1) == "color" else o.shape)]
    if stem == "How many objects are there in the image?":
        return [c for c in choices if c == str(len(objs))]
    if m := re.fullmatch(r"How many (\w+)s are there in the image\?", stem):
        return [c for c in choices if c == str(sum(o.shape == m.group(1) for o in objs))]
    m = re.fullmatch(r"Where is the (.+)\?", stem)
    assert m, stem
    a = named(m.group(1))
    out = []
    for c in choices:
        phrase, rb = next((p, c[len(p) + 5 :]) for p in REL_PHRASE.values() if c.startswith(p + " the "))
        if REL_PHRASE[relation(a, named(rb))] == phrase:
            out.append(c)
    return out


def test_manifest(bench: tuple[Path, dict]) -> None:
    world, runs = bench
    manifest = json.loads((world / "bench" / "bench.json").read_text())
    assert manifest["version"] == BENCH_VERSION and manifest["test_images"] == 20
    assert (
        set(manifest["tasks"])
        == set(runs)
        == {
            "coco_caption",
            "mme",
            "pope",
            "binary",
            "mmbench",
            "scienceqa_img",
            "llava_bench",
            "demon",
        }
    )
    for run, entry in manifest["tasks"].items():
        assert set(entry) == {"task", "path"} and entry["task"] in REGISTERED, run
        assert not Path(entry["path"]).is_absolute()
        assert runs[run] == {"task": entry["task"], "path": str(world / "bench" / entry["path"])}
        assert Path(runs[run]["path"]).exists(), run
    assert runs["binary"]["task"] == "pope"


def test_only_test_images(bench: tuple[Path, dict]) -> None:
    world, _ = bench
    test_ids = set(_scenes(world))
    assert len(test_ids) == 20
    # rendered images are named {test id}_{k}.png; MMBench's decoded copies ({tsv}_images/) aside
    pngs = [p for p in (world / "bench").rglob("*.png") if not p.parent.name.endswith("_images")]
    used = {p.stem.split("_")[0] for p in pngs}
    assert used and used <= test_ids
    tsv = Path(_path(bench, "mmbench")).read_text()
    test_pngs = {
        base64.b64encode((world / "images" / "test" / f"{i}.png").read_bytes()).decode() for i in test_ids
    }
    inline = {
        row["image"] for row in csv.DictReader(tsv.splitlines(), delimiter="\t") if len(row["image"]) > 64
    }
    assert inline and inline <= test_pngs


def test_coco_captions(bench: tuple[Path, dict]) -> None:
    read = read_coco_captions(_path(bench, "coco_caption"))
    assert len(read) == 20 and not read.bad
    assert all(len(s.target) >= 2 for s in read.samples)
    preds = {str(s.id): s.target[0] for s in read.samples}
    out = score_samples("coco_caption", read, preds, Options(java=False))
    assert out["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert out["counts"]["missing"] == 0


def test_mme_pairs(bench: tuple[Path, dict]) -> None:
    read = read_mme(_path(bench, "mme"))
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


def test_pope_splits(bench: tuple[Path, dict]) -> None:
    read = read_pope(_path(bench, "pope"))
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


def test_pope_negatives_follow_definitions(bench: tuple[Path, dict]) -> None:
    world, _ = bench
    read = read_pope(_path(bench, "pope"))
    present = {
        i: {f"{o['color']} {o['shape']}" for o in r["scene"]["objects"]} for i, r in _scenes(world).items()
    }
    negs: dict[str, Counter] = {}
    for s in read.samples:
        cat = s.meta["question"].removeprefix("Is there a ").removesuffix(" in the image?")
        assert (cat in present[s.images[0].stem]) == (s.target == "yes"), s.where
        if s.target == "no":
            negs.setdefault(s.meta["split"], Counter())[s.meta["question"]] += 1
    # popular and adversarial draw from a few categories; random spreads wider
    assert len(negs["popular"]) < len(negs["random"])
    assert len(negs["adversarial"]) < len(negs["random"])


def test_binary_balanced_per_type(bench: tuple[Path, dict]) -> None:
    world, _ = bench
    scenes = _scenes(world)
    read = read_pope(_path(bench, "binary"))
    assert not read.bad and len(read) == 40  # a yes and a no per test image
    labels: dict[str, Counter] = defaultdict(Counter)
    for s in read.samples:
        labels[s.meta["split"]][s.target] += 1
        scene = Scene.from_dict(scenes[s.images[0].stem]["scene"])
        q = s.meta["question"].split("\n")[0]
        if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q):  # existence: check the label
            assert ((m.group(1), m.group(2)) in {(o.color, o.shape) for o in scene.objects}) == (
                s.target == "yes"
            )
    assert set(labels) == set(FAMILIES)  # every question type, each exactly 50/50
    assert all(c["yes"] == c["no"] > 0 for c in labels.values())
    out = score_samples("pope", read, _perfect(read))
    assert {k: v["accuracy"] for k, v in out.items() if k != "counts"} == dict.fromkeys(FAMILIES, 1.0)
    always_yes = score_samples("pope", read, {str(s.id): "Yes" for s in read.samples})
    assert all(v["accuracy"] == 0.5 for t, v in always_yes.items() if t != "counts")


def test_mmbench_circular(bench: tuple[Path, dict], tmp_path: Path) -> None:
    world, _ = bench
    path = Path(_path(bench, "mmbench"))
    assert path.read_text().split("\n")[0].split("\t") == list(MMBENCH_COLUMNS)  # the dev TSV's columns
    read = read_mmbench(path, image_dir=tmp_path)
    assert not read.bad and len(read) == 80
    by_bytes = {(world / r["image"]).read_bytes(): r for r in _scenes(world).values()}
    groups: dict[int, list] = defaultdict(list)
    for s in read.samples:
        groups[s.meta["group"]].append(s)
    assert len(groups) == 20
    for group in groups.values():
        first, *copies = sorted(group, key=lambda s: s.id)
        assert [s.id for s in copies] == [first.id + k * 1_000_000 for k in (1, 2, 3)]
        right = first.meta["choices"]["ABCD".index(first.target)]
        for k, s in enumerate(copies, start=1):
            assert s.meta["choices"] == first.meta["choices"][k:] + first.meta["choices"][:k]
            assert s.meta["choices"]["ABCD".index(s.target)] == right  # the answer moved with it
            assert s.images[0].read_bytes() == first.images[0].read_bytes()
        scene = Scene.from_dict(by_bytes[first.images[0].read_bytes()]["scene"])
        assert _true_options(scene, first.meta["question"], first.meta["choices"]) == [right]
    assert {s.meta["category"] for s in read.samples} <= set(FAMILIES)
    out = score_samples("mmbench", read, _perfect(read))
    assert out["accuracy"] == out["circular_accuracy"] == 100.0
    # one copy of each question wrong: 75% plain, but no question survives circular evaluation
    wrong = _perfect(read) | {str(g[1].id): "ABCD"["ABCD".index(g[1].target) - 1] for g in groups.values()}
    out = score_samples("mmbench", read, wrong)
    assert out["accuracy"] == 75.0 and out["circular_accuracy"] == 0.0


def test_scienceqa_img(bench: tuple[Path, dict]) -> None:
    world, _ = bench
    scenes = _scenes(world)
    read = read_scienceqa(_path(bench, "scienceqa_img"))
    assert not read.bad and len(read) == 20
    assert {len(s.meta["choices"]) for s in read.samples} <= {2, 3, 4}
    for s in read.samples:
        scene = Scene.from_dict(scenes[s.images[0].stem]["scene"])
        stem = s.prompt.split("\n")[2]  # <image>, Context: N/A, the question, the options
        right = s.meta["choices"]["ABCD".index(s.target)]
        assert _true_options(scene, stem, s.meta["choices"]) == [right], s.where
    assert score_samples("scienceqa_img", read, _perfect(read))["accuracy"] == 100.0
    off = {str(s.id): "ABCD"["ABCD".index(s.target) - 1] for s in read.samples}
    assert score_samples("scienceqa_img", read, off)["accuracy"] == 0.0


def test_llava_bench(bench: tuple[Path, dict]) -> None:
    read = read_llava_bench(_path(bench, "llava_bench"))
    assert not read.bad and len(read) == 60
    assert Counter(s.meta["category"] for s in read.samples) == {"conv": 20, "detail": 20, "complex": 20}
    assert all(s.target and s.meta["context"] for s in read.samples)


def test_demon(bench: tuple[Path, dict]) -> None:
    read = read_demon(_path(bench, "demon"))
    assert not read.bad and len(read) > 0
    assert all(len(s.images) >= 2 for s in read.samples)
    kinds = {s.meta["task"]: s.meta["kind"] for s in read.samples}
    assert kinds == {
        "Shapes_WhichImage": "image-choice",
        "Shapes_Difference": "open-ended",
        "Shapes_SequenceCloze": "image-choice",
        "Shapes_InContext": "multi-choice",
    }
    out = score_samples("demon", read, _perfect(read))
    for task, value in out["tasks"].items():
        assert value == pytest.approx(100.0), task
    assert set(out["categories"]) == {"Other"}  # tasks of our own naming
    # another option than the right one, for every sample of the choice tasks
    wrong = {
        str(s.id): next(c for c in s.meta["choices"] if c != s.target)
        for s in read.samples
        if s.meta["kind"] != "open-ended"
    }
    scores = score_samples("demon", read, _perfect(read) | wrong)["tasks"]
    for task in ("Shapes_WhichImage", "Shapes_SequenceCloze", "Shapes_InContext"):
        assert scores[task] == 0.0, task


def test_sequence_cloze_answer_continues_the_scene(bench: tuple[Path, dict]) -> None:
    """Both rules end on the test scene itself: the right candidate is the test image, and it
    is the only candidate that is."""
    world, _ = bench
    read = read_demon(_path(bench, "demon"), tasks=["Shapes_SequenceCloze"])
    assert len(read) == 20
    for s in read.samples:
        candidates = s.images[-4:]
        test_image = (world / "images" / "test" / f"{candidates[0].stem.split('_')[0]}.png").read_bytes()
        same = [i for i, p in enumerate(candidates) if p.read_bytes() == test_image]
        assert same == ["ABCD".index(s.target[-1])], s.where
        assert len({p.read_bytes() for p in candidates}) == 4  # four different pictures


def test_in_context_answers_follow_one_rule(bench: tuple[Path, dict]) -> None:
    world, _ = bench
    scenes = _scenes(world)
    read = read_demon(_path(bench, "demon"), tasks=["Shapes_InContext"])
    assert len(read) == 20

    def rules(row: dict) -> dict[str, str]:
        objs = Scene.from_dict(row["scene"]).objects
        n = len(objs)
        return {
            "count": f"{number_word(n)} object{'s' if n != 1 else ''}",
            "colors": join(sorted({o.color for o in objs})),
            "shapes": join(sorted({o.shape for o in objs})),
        }

    for s in read.samples:
        shown = re.findall(r"Answer: (.+)", s.prompt) + [s.target]
        assert len(shown) == len(s.images) >= 2 and s.target in s.meta["choices"]
        per_image = [rules(scenes[p.stem]) for p in s.images]
        # one rule gives every demonstration's answer and the query's
        assert any(all(r[rule] == a for r, a in zip(per_image, shown, strict=True)) for rule in per_image[0])


def test_idempotent_and_cheap(bench: tuple[Path, dict]) -> None:
    world, runs = bench
    before = (world / "bench" / "bench.json").stat().st_mtime_ns
    t = time.perf_counter()
    assert write_benchmarks(world, seed=1) == runs
    assert time.perf_counter() - t < 0.5
    assert (world / "bench" / "bench.json").stat().st_mtime_ns == before


def test_reproducible(bench: tuple[Path, dict], tmp_path: Path) -> None:
    world, runs = bench
    again = tmp_path / "again"
    build_world(again, num_images=40, seed=1, image_size=32, test_frac=0.5)
    for run in ("binary", "mmbench", "scienceqa_img"):
        rel = Path(runs[run]["path"]).relative_to(world)
        assert (again / rel).read_bytes() == (world / rel).read_bytes(), run
    for task in ("Shapes_SequenceCloze", "Shapes_InContext"):
        rel = Path("bench", "demon", task, "core", "core.json")
        assert (again / rel).read_bytes() == (world / rel).read_bytes(), task


def test_tiny_and_rebuilt_worlds(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    build_world(empty, num_images=3, image_size=32)
    (empty / "meta" / "test.jsonl").write_text("")  # a world without test scenes: no benchmark
    assert write_benchmarks(empty) == {}
    world = tmp_path / "one"
    build_world(world, num_images=3, seed=0, image_size=32)  # one test image
    runs = write_benchmarks(world)
    assert len(read_coco_captions(runs["coco_caption"]["path"])) == 1
    # no other scene to compare with or learn from: no which-image, no in-context task
    tasks = {s.meta["task"] for s in read_demon(runs["demon"]["path"])}
    assert tasks == {"Shapes_Difference", "Shapes_SequenceCloze"}
    assert len(read_pope(runs["binary"]["path"])) == 2
    first = json.loads((world / "bench" / "bench.json").read_text())["test_hash"]
    # rebuilt in place with other args: the stale benchmark files are replaced, not reused
    build_world(world, num_images=3, seed=5, image_size=32)
    assert json.loads((world / "bench" / "bench.json").read_text())["test_hash"] != first
    test_id = json.loads((world / "meta" / "test.jsonl").read_text())["id"]
    assert [p.stem for p in (world / "bench" / "coco" / "images").iterdir()] == [test_id]


def test_run_task_on_every_offline_benchmark(bench: tuple[Path, dict], tmp_path: Path) -> None:
    """`graft eval`'s runner reads, answers and scores each run (LLaVA-Bench needs a judge)."""
    import torch

    from graft.eval.runner import run_task

    from tiny import tiny_model_and_processor

    torch.set_num_threads(1)
    _, runs = bench
    model, processor = tiny_model_and_processor()
    for run, entry in runs.items():
        if entry["task"] == "llava_bench":
            continue
        res = run_task(
            model,
            processor,
            entry["task"],
            entry["path"],
            tmp_path / run,
            limit=4,
            max_new_tokens=2,
            options=Options(java=False),  # Java's METEOR takes seconds to start
            progress=False,
        )
        assert res["metrics"]["counts"]["samples"] == 4 and res["metrics"]["counts"]["missing"] == 0, run


def test_in_context_options_have_no_centre_a_blind_reader_could_pick() -> None:
    # wrong sets one step off the right one made it the option nearest all others (0.42 blind)
    import random

    from graft.world.bench_demon import _in_context_answer, _in_context_options
    from graft.world.scene import sample_scene

    for seed in range(300):
        rng = random.Random(seed)
        scene = sample_scene(rng)
        for rule in ("colors", "shapes"):
            options = _in_context_options(rule, scene, rng)
            assert _in_context_answer(rule, scene) in options and len(set(options)) == 4
            sets = [set(o.replace(" and ", ", ").split(", ")) for o in options]
            spread = {sum(len(s ^ t) for t in sets) for s in sets}
            assert len(spread) == 1, options


def test_difference_says_which_of_two_alike_objects_changed(tmp_path: Path) -> None:
    import random

    from graft.world.bench_demon import _difference
    from graft.world.edits import ShapesEditor
    from graft.world.scene import Obj

    twins = Scene([Obj("circle", "red", "large", 0.25, 0.5), Obj("circle", "red", "large", 0.75, 0.5)])
    twins.render().save(tmp_path / "twins.png")
    row = {"id": "000001", "image": "twins.png", "scene": twins.to_dict()}
    for seed in range(6):
        said = _difference(tmp_path, row, random.Random(seed), tmp_path / "out")["response"]
        assert re.fullmatch(r"The large red circle on the (left|right) is \w+ in the second image\.", said)
        _, text = ShapesEditor._modify(twins, seed % 2, random.Random(seed))
        assert text.startswith("The large red circle on the " + ("left" if seed % 2 == 0 else "right"))
