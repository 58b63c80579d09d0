"""``graft mix``: mixtures of visual and text-only instruction data, their locks and their errors."""

from __future__ import annotations

import json
import random
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import graft.cli.mix  # noqa: F401  (registers the verb)
from graft.cli.app import app
from graft.data import parse_record
from graft.instruct.mix import (
    MixError,
    build_mix,
    format_summary,
    load_mix_spec,
    read_lock,
    rebuild_mix,
    write_mix,
)
from graft.instruct.mix_select import choose, largest_remainder
from graft.instruct.mix_spec import Strategy, mix_spec_from_data, parse_strategy


def _turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _visual(i: int) -> dict:
    return {"id": f"v{i}", "image": f"v{i}.png", "conversations": _turns("<image>\nWhat?", f"thing {i}")}


def _d(path: str, strategy: str | None = None, **fields) -> dict:
    """One dataset of a mixture, its file in data/."""
    return {"path": f"data/{path}", **({"strategy": strategy} if strategy else {}), **fields}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A LLaVA JSON list (10 records, images in imgs/), a JSONL file (4, one with two images),
    a ShareGPT text-only file (4; two turn styles, one without an id) and an Alpaca file (5)."""
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    for i in range(10):
        (root / "imgs" / f"v{i}.png").write_bytes(b"png")
    (root / "imgs" / "x.png").write_bytes(b"png")
    (root / "llava.json").write_text(json.dumps([_visual(i) for i in range(10)]))
    lines = [
        {"id": f"j{i}", "image": "x.png", "conversations": _turns("<image> Red?", "y")} for i in range(3)
    ]
    lines.append(
        {"id": "j3", "images": ["v0.png", "v1.png"], "conversations": _turns("<image><image>?", "no")}
    )
    (root / "visual.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    sharegpt = [
        {"id": "s0", "conversations": _turns("Hi", "Hello")},
        {
            "id": "s1",
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        },
        {"conversations": _turns("Name a colour", "Blue")},
        {"id": "v0", "conversations": _turns("An id the LLaVA file uses too", "yes")},
    ]
    (root / "sharegpt.json").write_text(json.dumps(sharegpt))
    alpaca = [
        {"instruction": f"Count to {i}", "input": "" if i % 2 else "in words", "output": "."}
        for i in range(5)
    ]
    (root / "alpaca.json").write_text(json.dumps(alpaca))
    return root


def _spec(tmp_path: Path, datasets: list[dict], **top):
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, **top}))
    return load_mix_spec(path)


def _build(tmp_path: Path, datasets: list[dict], out: str = "out/mixed.json", top: dict | None = None, **kw):
    return build_mix(_spec(tmp_path, datasets, **(top or {})), tmp_path / out, **kw)


def _ids(result) -> list[str]:
    return [str(r["id"]) for r in result.records]


# --- strategies ------------------------------------------------------------------------------------
def test_strategies_parse_and_reject_clearly():
    assert parse_strategy("all", "x") == Strategy("all")
    assert parse_strategy("first: 12.5%", "x") == Strategy("first", Fraction(25, 2))
    assert str(parse_strategy("random:7", "x")) == "random:7"
    assert str(parse_strategy("weight:0.5", "x")) == "weight:0.5"
    for bad, message in [
        ("top:5", "unknown strategy 'top:5'"),
        ("first:150%", "more than 100%"),
        ("first:10", "takes a percentage"),
        ("random:-3", "must be above 0"),
        ("random:2.5", "whole number"),
        ("weight:0", "must be above 0"),
        ("random:many", "not a number"),
        ("all:3", "unknown strategy"),
        (5, "expected a string"),
    ]:
        with pytest.raises(MixError, match=message):
            parse_strategy(bad, "mix.yaml: datasets[0] (a.json)")


def test_all_and_first_percent_keep_file_order(tmp_path, data):
    datasets = [_d("llava.json", "first:35%"), _d("visual.jsonl", "first:1%"), _d("alpaca.json", "all")]
    result = _build(tmp_path, datasets, shuffle=False)
    # floor(10 * 35%) = 3; floor(4 * 1%) = 0, but at least 1; then dataset order
    assert _ids(result) == "v0 v1 v2 j0 alpaca-0 alpaca-1 alpaca-2 alpaca-3 alpaca-4".split()
    counts = [(r.available, r.chosen, r.with_images) for r in result.reports]
    assert counts == [(10, 3, 3), (4, 1, 1), (5, 5, 0)]


def test_random_is_seeded_without_replacement_in_file_order(tmp_path, data):
    def pick(seed: int) -> list[str]:
        return _ids(_build(tmp_path, [_d("llava.json", "random:4")], top={"seed": seed}, shuffle=False))

    first = pick(0)
    assert len(set(first)) == 4 and first == sorted(first, key=lambda i: int(i[1:]))
    assert pick(0) == first
    assert any(pick(seed) != first for seed in range(1, 6))


def test_random_beyond_the_file_needs_replace_and_then_repeats(tmp_path, data):
    with pytest.raises(MixError, match=r"\[0\] \(data/visual.jsonl\): field 'strategy': random:9 asks for"):
        _build(tmp_path, [_d("visual.jsonl", "random:9")])
    result = _build(tmp_path, [_d("visual.jsonl", "random:9", replace=True)])
    ids = _ids(result)
    assert len(ids) == len(set(ids)) == 9
    # every record twice, one more drawn: copies are id#2 (and id#3)
    assert {"j0", "j0#2", "j1", "j1#2", "j2", "j2#2", "j3", "j3#2"} <= set(ids)
    assert any("sampled with replacement" in note for note in result.notes)
    assert "sampled with replacement" in format_summary(result)


def test_choose_repeats_only_when_it_must():
    rng = random.Random(0)
    picked = choose(Strategy("random", 3), 5, 3, rng)
    assert picked == sorted(set(picked)) and len(picked) == 3
    assert choose(Strategy("first", 50), 5, 2, rng) == [0, 1]
    picked = choose(Strategy("weight", 1), 3, 7, rng)
    assert sorted(picked.count(i) for i in range(3)) == [2, 2, 3]


def test_weights_share_what_total_leaves(tmp_path, data):
    assert largest_remainder(10, [Fraction(1), Fraction(3)]) == [3, 7]  # 2.5 / 7.5: the tie goes first
    assert largest_remainder(7, [Fraction(1)] * 3) == [3, 2, 2]
    datasets = [_d("llava.json", "all"), _d("sharegpt.json", weight=1), _d("alpaca.json", "weight:3")]
    result = _build(tmp_path, datasets, top={"total": 20})
    assert [r.chosen for r in result.reports] == [10, 3, 7]
    assert len(result.records) == 20
    assert result.reports[2].strategy == "weight:3 (7 records)"
    assert any(note.startswith("alpaca: sampled with replacement: 7 records from 5") for note in result.notes)
    assert not any(note.startswith("sharegpt: sampled") for note in result.notes)


def test_weight_errors(tmp_path, data):
    llava, alpaca = _d("llava.json", "all"), _d("alpaca.json", weight=1)
    cases = [
        ([llava, alpaca], {}, "needs the top-level field 'total'"),
        ([llava], {"total": 5}, "only used with weight:W"),
        ([llava, alpaca], {"total": 10}, r"datasets\[1\].*comes to 0 records"),
        ([_d("alpaca.json", weight=-1)], {"total": 3}, "field 'weight'.*must be above 0"),
        ([_d("alpaca.json", "all", weight=1)], {"total": 3}, "not both"),
    ]
    for datasets, top, message in cases:
        with pytest.raises(MixError, match=message):
            _build(tmp_path, datasets, top=top)


# --- records ---------------------------------------------------------------------------------------
def test_text_only_formats_become_graft_records(tmp_path, data):
    result = _build(tmp_path, [_d("sharegpt.json", "all"), _d("alpaca.json", "first:40%")], shuffle=False)
    by_id = {r["id"]: r for r in result.records}
    assert by_id["s1"]["conversations"] == _turns("2+2?", "4")
    assert by_id["sharegpt-2"]["conversations"] == _turns("Name a colour", "Blue")  # no id: name-k
    assert by_id["alpaca-0"]["conversations"] == _turns("Count to 0\n\nin words", ".")
    assert by_id["alpaca-1"]["conversations"] == _turns("Count to 1", ".")
    for record in result.records:
        assert "image" not in record and "images" not in record
        assert parse_record(record, "out").images == []


def test_ids_met_in_two_datasets_are_prefixed_in_both(tmp_path, data):
    (data / "again.jsonl").write_text((data / "visual.jsonl").read_text())
    datasets = [_d("llava.json", "all"), _d("sharegpt.json", "all", name="chat")]
    datasets += [_d("visual.jsonl", "all"), _d("again.jsonl", "all")]
    result = _build(tmp_path, datasets, shuffle=False)
    ids = _ids(result)
    assert len(ids) == len(set(ids)) == 10 + 4 + 4 + 4
    assert "llava:v0" in ids and "chat:v0" in ids and "v0" not in ids and "v1" in ids
    assert "visual:j0" in ids and "again:j0" in ids
    summary = format_summary(result)
    assert "5 ids were used by more than one dataset" in summary
    assert "prefixed with the dataset's name (name:id) in again, chat, llava, visual" in summary
    assert _ids(_build(tmp_path, datasets, shuffle=False)) == ids
    with pytest.raises(MixError, match=r"datasets\[1\] \(data/llava.json\): field 'name': 'llava' is alr"):
        _build(tmp_path, [datasets[0], _d("llava.json", "all")])


def test_bad_records_name_the_place_and_skip_bad_counts_them(tmp_path, data):
    records = [_visual(0), {"id": "no-marker", "image": "v1.png", "conversations": _turns("Hi", "x")}]
    records += [{"id": "v0", "conversations": _turns("a", "b")}, {"instruction": "", "output": "x"}]
    (data / "bad.json").write_text(json.dumps(records))
    with pytest.raises(
        MixError, match=r"\[0\] \(data/bad.json\): .*bad.json\[1\] \(id 'no-marker'\): field 'con"
    ):
        _build(tmp_path, [_d("bad.json", "all")])
    result = _build(tmp_path, [_d("bad.json", "all")], skip_bad=True)
    assert _ids(result) == ["v0"] and result.reports[0].bad == 3
    assert "bad" in format_summary(result).splitlines()[0]
    (data / "dup.jsonl").write_text("".join(json.dumps(_visual(0)) + "\n" for _ in range(2)))
    with pytest.raises(MixError, match=r"dup.jsonl:2: id 'v0' is already used at .*dup.jsonl:1"):
        _build(tmp_path, [_d("dup.jsonl", "all")])


# --- images ----------------------------------------------------------------------------------------
def test_image_paths_are_rewritten_to_work_from_the_output(tmp_path, data):
    datasets = [
        _d("llava.json", "first:10%", image_root="data/imgs"),
        _d("visual.jsonl", "all", image_root="data/imgs"),
    ]
    datasets.append(_d("sharegpt.json", "all"))
    out = tmp_path / "deep" / "er" / "mixed.jsonl"
    result = _build(tmp_path, datasets, out="deep/er/mixed.jsonl", shuffle=False)
    assert result.records[0]["image"] == "../../data/imgs/v0.png"
    assert result.records[-5]["images"] == ["../../data/imgs/v0.png", "../../data/imgs/v1.png"]
    write_mix(result, out)
    for record in map(json.loads, out.read_text().splitlines()):
        for image in parse_record(record, "out").images:
            assert (out.parent / image).is_file()
    absolute = _build(tmp_path, datasets, out="deep/er/mixed.jsonl", absolute_images=True, shuffle=False)
    assert absolute.records[0]["image"] == (tmp_path / "data/imgs/v0.png").as_posix()
    # without image_root, paths stay as written
    bare = _build(tmp_path, [_d("llava.json", "first:10%")])
    assert bare.records[0]["image"] == "v0.png"


def test_images_are_checked_only_when_asked(tmp_path, data):
    (data / "imgs" / "v3.png").unlink()
    datasets = [_d("llava.json", "all", image_root="data/imgs")]
    assert len(_build(tmp_path, datasets).records) == 10
    with pytest.raises(MixError, match=r"llava.json\[3\] \(id 'v3'\): field image: image not found"):
        _build(tmp_path, datasets, check_images=True)
    result = _build(tmp_path, datasets, check_images=True, skip_bad=True)
    assert "v3" not in _ids(result) and result.reports[0].bad == 1
    # no image_root: the images must be beside the output
    with pytest.raises(MixError, match="image not found"):
        _build(tmp_path, [_d("llava.json", "all")], check_images=True)


# --- output and locks ------------------------------------------------------------------------------
MIXTURE = [
    _d("llava.json", "random:6", image_root="data/imgs"),
    _d("visual.jsonl", "all", image_root="data/imgs"),
]
MIXTURE += [_d("sharegpt.json", weight=1), _d("alpaca.json", weight=2)]


def _write(tmp_path: Path, out: str, lock: str | None = None, seed: int = 7):
    result = _build(tmp_path, MIXTURE, out=out, top={"seed": seed, "total": 19})
    write_mix(result, tmp_path / out, None if lock is None else tmp_path / lock)
    return (tmp_path / out).read_bytes()


def test_same_mixture_and_seed_give_the_same_bytes(tmp_path, data):
    first = _write(tmp_path, "out/a.json")
    assert _write(tmp_path, "out/b.json") == first
    assert _write(tmp_path, "out/c.json", seed=8) != first
    records = json.loads(first)
    assert len(records) == 19 and sum("image" in r or "images" in r for r in records) == 10
    lines = _write(tmp_path, "out/a.jsonl").decode().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_no_shuffle_keeps_dataset_order(tmp_path, data):
    result = _build(tmp_path, MIXTURE, top={"total": 19}, shuffle=False)
    assert _ids(result)[6:10] == ["j0", "j1", "j2", "j3"]
    assert result.lock.order == _ids(result) and not result.lock.shuffle


def test_lock_rebuilds_the_same_bytes_and_refuses_a_changed_source(tmp_path, data):
    first = _write(tmp_path, "out/mixed.json", lock="out/mixed.lock.json")
    lock_data = json.loads((tmp_path / "out/mixed.lock.json").read_text())
    assert lock_data["datasets"][0]["path"] == "../data/llava.json"
    assert lock_data["datasets"][3]["strategy"] == "weight:2 (6 records)"
    assert len(lock_data["datasets"][0]["chosen"]) == 6 and len(lock_data["order"]) == 19
    lock = read_lock(tmp_path / "out/mixed.lock.json")
    again = rebuild_mix(lock, tmp_path / "out/rebuilt.json")
    write_mix(again, tmp_path / "out/rebuilt.json")
    assert (tmp_path / "out/rebuilt.json").read_bytes() == first
    # the mixture file is not needed, and a moved folder (data and lock together) still rebuilds
    (tmp_path / "mix.yaml").unlink()
    moved = tmp_path / "moved"
    for folder in ("data", "out"):
        shutil.copytree(tmp_path / folder, moved / folder)
    again = rebuild_mix(read_lock(moved / "out/mixed.lock.json"), moved / "out/x.json")
    write_mix(again, moved / "out/x.json")
    assert (moved / "out/x.json").read_bytes() == first
    with open(moved / "data/alpaca.json", "a") as f:
        f.write(" ")
    with pytest.raises(
        MixError, match=r"datasets\[3\] .*alpaca.json\): field 'sha256': the file has changed"
    ):
        rebuild_mix(read_lock(moved / "out/mixed.lock.json"), moved / "out/y.json")


def test_bad_lock_files(tmp_path):
    cases = [
        ("{", "not valid JSON"),
        ("[]", "not a graft mix lock"),
        ('{"graft_mix_lock": 1, "datasets": [{"name": "a"}]}', r"datasets\[0\]: field 'sha256'"),
    ]
    for text, message in cases:
        (tmp_path / "l.json").write_text(text)
        with pytest.raises(MixError, match=message):
            read_lock(tmp_path / "l.json")
    with pytest.raises(MixError, match="lock file not found"):
        read_lock(tmp_path / "none.json")


# --- bad mixtures ----------------------------------------------------------------------------------
L = "- {path: data/llava.json, strategy: "
BAD_MIXTURES = [
    ("datasets: [", r"mix.yaml:\d+: not valid YAML"),
    ("- just-a-path.json", r"datasets\[0\] is 'just-a-path.json'"),
    ("datasets: []", "non-empty list"),
    ("seed: 1", "non-empty list"),
    ("- {path: data/llava.json}", r"datasets\[0\] \(data/llava.json\): field 'strategy' is missing"),
    (L + "'first:150%'}", r"datasets\[0\] \(data/llava.json\): field 'strategy'.*more than 100%"),
    (L + "'random:-2'}", "field 'strategy'.*above 0"),
    (L + "sample}", "unknown strategy 'sample'"),
    (L + "all, stratgy: all}", "unknown field 'stratgy'"),
    (L + "all, replace: true}", "'replace' applies to random:N"),
    (L + "all, image_root: 3}", "field 'image_root' must be a folder"),
    ("datasets: [{path: data/llava.json, strategy: all}]\nseed: x", "field 'seed' must be a whole number"),
    ("- {path: data/missing.json, strategy: all}", r"\[0\] \(data/missing.json\): field 'path': file not"),
    ("- {path: data/empty.json, strategy: all}", r"\[0\] \(data/empty.json\).*no usable records"),
    ("- {path: data/broken.json, strategy: all}", r"\[0\] \(data/broken.json\).*not valid JSON"),
]


@pytest.mark.parametrize("text, message", BAD_MIXTURES)
def test_bad_mixtures_name_the_dataset_and_field(tmp_path, data, text, message):
    (data / "empty.json").write_text("[]")
    (data / "broken.json").write_text('[{"id": 1,')
    (tmp_path / "mix.yaml").write_text(text)
    with pytest.raises(MixError, match=message):
        build_mix(load_mix_spec(tmp_path / "mix.yaml"), tmp_path / "out.json")


def test_mixture_as_data_and_a_missing_mixture_file(tmp_path):
    spec = mix_spec_from_data({"seed": 2, "datasets": [{"path": "a.json", "strategy": "all"}]}, tmp_path)
    assert spec.seed == 2 and spec.datasets[0].name == "a" and spec.datasets[0].path == tmp_path / "a.json"
    with pytest.raises(MixError, match="mixture file not found"):
        load_mix_spec(tmp_path / "nope.yaml")


# --- the verb --------------------------------------------------------------------------------------
def test_cli_mixes_rebuilds_and_fails_clearly(tmp_path, data):
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"seed": 1, "total": 19, "datasets": MIXTURE}))
    runner = CliRunner()
    out = tmp_path / "out" / "mixed.json"
    result = runner.invoke(app, ["mix", str(tmp_path / "mix.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "text-only" in result.output and "19 records" in result.output
    lock = tmp_path / "out" / "mixed.lock.json"
    assert lock.is_file()
    again = tmp_path / "out" / "again.json"
    result = runner.invoke(app, ["mix", "--from-lock", str(lock), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()
    assert not (tmp_path / "out" / "again.lock.json").exists()
    for args, message in [
        (["--out", str(again)], "give exactly one of MIXTURE"),
        (["--from-lock", str(lock), "--out", str(again), "--no-shuffle"], "come from the lock"),
        (
            [str(tmp_path / "mix.yaml"), "--out", str(data / "alpaca.json")],
            "one of the mixture's source files",
        ),
        ([str(tmp_path / "nope.yaml"), "--out", str(again)], "mixture file not found"),
    ]:
        result = runner.invoke(app, ["mix", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error: " in result.output and message in result.output
    assert json.loads((data / "alpaca.json").read_text())[0]["instruction"] == "Count to 0"  # untouched
