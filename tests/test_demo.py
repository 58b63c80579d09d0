"""``graft demo`` end to end on a tiny world: every step runs, the summary has its keys, a rerun
reuses every finished step."""

import json

import pytest
from typer.testing import CliRunner

from graft.cli import app

from tiny import SMOKE_DEMO


def test_demo_runs_end_to_end_and_reuses_finished_steps(tmp_path):
    # two steps of every stage: the default alignment's (ground), the word alignment's, stage 1
    args = ["-q", "demo", "--out", str(tmp_path), *SMOKE_DEMO]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("binary/accuracy", "mcq/accuracy", "binary/accuracy_blind", "mcq/accuracy_blind"):
        assert 0.0 <= summary[key] <= 1.0
    seen_types = [k for k in summary if k.startswith("qtype/binary_") and k.endswith("/accuracy")]
    assert seen_types and all(f"{k}_blind" in summary for k in seen_types)
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve][0] == 0 and "binary/accuracy_blind" in curve[-1]
    # the last point is the final evaluation's, not a second pass over the same model
    last = curve[-1]["step"]
    assert last == json.loads((tmp_path / "stage2" / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert all(curve[-1][k] == summary[k] for k in ("binary/accuracy", "mcq/accuracy_blind"))
    assert not (tmp_path / "curve" / f"step{last}").exists() and (tmp_path / "curve" / "step0").is_dir()
    for key in (
        "probe/shape_acc",
        "caption/object_recall",
        "binary/accuracy_text",
        "mcq/accuracy_exact_tokens",
        "words/shape_recall",
        "ground/object_shape_acc",
        "place/accuracy",
    ):
        assert key in summary
    for stage in ("stage1", "stage2"):
        gain = summary[f"reliance/{stage}_loss_other"] - summary[f"reliance/{stage}_loss_own"]
        assert summary[f"reliance/{stage}_gain"] == pytest.approx(gain)
    steps = (
        "world",
        "backbones",
        "compose",
        "ground",
        "align",
        "stage1",
        "snap",
        "perceive",
        "stage2",
        "eval",
        "bench",
    )
    assert all(summary[f"time/{s}_s"] >= 0 for s in steps)
    assert (tmp_path / "summary.md").read_text().startswith("# graft demo")
    md = (tmp_path / "summary.md").read_text()
    assert "ground/object_shape_acc" in md
    types = [k.split("/")[1] for k in summary if k.startswith("qtype/") and k.endswith("/accuracy")]
    # every question type's row says how many questions it was asked, as many as the file holds
    for family in ("binary", "mcq"):
        counts = [summary[f"qtype/{t}/n"] for t in types if t.startswith(family + "_")]
        assert sum(counts) == summary[f"{family}/n"]
    assert types and all(f"| {t} | {summary[f'qtype/{t}/n']} | " in md for t in types)
    # a tower trained on the world, not refined for centre cells: its cells name what covers them
    assert json.loads((tmp_path / "ground" / "ground.json").read_text())["cells"] == "cover"
    assert (tmp_path / "report" / "report.html").exists()
    # every run of the world's benchmark suite was answered, scored and reported
    bench = json.loads((tmp_path / "world" / "bench" / "bench.json").read_text())["tasks"]
    answered = {p.parent.name for p in tmp_path.glob("*/results.json")}
    skipped = set(json.loads((tmp_path / "bench.json").read_text())["skipped"])
    assert answered | skipped == set(bench) and skipped <= {"llava_bench"}
    header = (tmp_path / "report" / "report.md").read_text().splitlines()[2]
    assert all(f"| {run} (" in header or f" {run} (" in header for run in answered)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert all(f"[{s}] reused" in again.output for s in steps)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_step_clock_reuses_a_step_another_run_did(tmp_path):
    """The ablation shares the demo's world: its own clock never timed that step, and redoing
    it (with the ablation's seed) would rewrite the demo's world under the demo's models."""
    from graft.pipelines.run_folder import StepClock

    said, ran = [], []
    clock = StepClock(tmp_path / "steps.json", echo=said.append)
    clock.run("world", lambda: True, lambda: ran.append("world"))
    assert not ran and said == ["[world] reused (made by another run)"] and clock.reused == {"world"}
    clock.run("stage1", lambda: False, lambda: ran.append("stage1"))
    assert ran == ["stage1"] and set(json.loads((tmp_path / "steps.json").read_text())) == {"stage1"}
    StepClock(tmp_path / "steps.json", echo=said.append).run("stage1", lambda: True, lambda: ran.append(2))
    assert ran == ["stage1"] and said[-1].startswith("[stage1] reused (") and "when it ran" in said[-1]


def test_a_run_folder_refuses_other_settings_before_any_work(tmp_path):
    """A rerun reuses finished steps: with another seed it would report the old model."""
    from graft.pipelines.demo_settings import DemoSettings
    from graft.pipelines.run_folder import RunFolderError, claim_folder

    claim_folder(tmp_path, DemoSettings(llm="tiny"))
    claim_folder(tmp_path, DemoSettings(llm="tiny"))  # the same settings: a rerun, allowed
    with pytest.raises(RunFolderError, match=r"seed=0.*seed=1"):
        claim_folder(tmp_path, DemoSettings(llm="tiny", seed=1))
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--llm", "tiny", "--seed", "1"])
    assert result.exit_code == 2 and "seed=0" in result.output and "seed=1" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_the_alignment_picks_the_stages_before_stage_2():
    from graft.pipelines.demo_settings import check_alignment, stages_wanted

    assert check_alignment("swiglu", None) == "ground" and check_alignment("lexical", None) == "words"
    assert check_alignment("qformer", None) == "captions"
    assert check_alignment("swiglu", "captions") == "captions"
    with pytest.raises(ValueError, match="queries"):
        check_alignment("qformer", "ground")
    with pytest.raises(ValueError, match="unknown alignment 'glue'"):
        check_alignment("swiglu", "glue")
    assert stages_wanted("ground", {}) == ["ground", "perceive"]
    assert stages_wanted("words", {}) == ["align", "snap", "perceive"]
    assert stages_wanted("captions", {}) == ["stage1"]
    # 0 skips a stage the alignment runs; a count asks for one it does not
    assert stages_wanted("ground", {"perceive": 0, "stage1": 3}) == ["ground", "stage1"]


def test_the_grounding_names_centre_cells_with_the_packaged_tower_and_covered_cells_with_others():
    from graft.pipelines.demo_settings import DemoSettings

    assert DemoSettings().cells() == "centre"
    assert DemoSettings(vision="train").cells() == DemoSettings(vision="/my/tower").cells() == "cover"
    assert DemoSettings(vision="train", ground_cells="centre").cells() == "centre"


def test_the_grounding_defaults_to_two_tokens_per_cell_with_their_stage_2_mix_and_no_warm_up():
    from graft.pipelines.demo_settings import DemoSettings

    two = DemoSettings()
    assert two.tokens_per_cell() == 2 and not two.warms_up()
    assert two.stage2_kinds_or_default() == "questions,conversation"
    one = DemoSettings(cell_tokens=1)
    assert one.tokens_per_cell() == 1 and one.warms_up() and one.stage2_kinds_or_default() == "all"
    assert DemoSettings(stage2_kinds="questions").stage2_kinds_or_default() == "questions"
    # the connectors whose tokens are no grounded cells keep one token and the whole mix
    for other in (DemoSettings(connector="qformer"), DemoSettings(connector="lexical")):
        assert other.tokens_per_cell() == 1 and other.stage2_kinds_or_default() == "all"
    assert DemoSettings(connector="lexical").warms_up() and not DemoSettings(connector="qformer").warms_up()


def test_two_tokens_per_cell_read_a_margin_around_each_cell_by_default():
    from graft.pipelines.demo_settings import DemoSettings

    assert DemoSettings().cell_margin_or_default() == 1
    assert DemoSettings().connector_spec()["reduction_margin"] == 1
    # one token per cell exports as Aya Vision, whose pixel shuffle has no margin
    others = (DemoSettings(cell_tokens=1), DemoSettings(connector="qformer"), DemoSettings(reduction="pool"))
    for other in others:
        assert other.cell_margin_or_default() == 0 and "reduction_margin" not in other.connector_spec()
    assert DemoSettings(cell_tokens=1, cell_margin=2).connector_spec()["reduction_margin"] == 2
    with pytest.raises(ValueError, match="widens pixel_shuffle's cells, not reduction 'pool'"):
        DemoSettings(reduction="pool", cell_margin=1).connector_spec()
    with pytest.raises(ValueError, match="use --cell-margin 0"):
        DemoSettings(connector="qformer", cell_margin=1).connector_spec()
    with pytest.raises(ValueError, match="a cell margin is a count of rings of patches"):
        DemoSettings(cell_margin=-1).connector_spec()


def test_the_demo_connector_gives_one_or_two_tokens_per_cell():
    from graft.pipelines.demo_connector import demo_connector_spec

    assert "tokens_per_group" not in demo_connector_spec("swiglu", None, 1)
    assert demo_connector_spec("swiglu", None, 2) == {
        "name": "swiglu",
        "reduction": "pixel_shuffle",
        "reduction_factor": 4,
        "layer_norm": True,
        "tokens_per_group": 2,
    }
    with pytest.raises(ValueError, match="one token or two"):
        demo_connector_spec("swiglu", None, 3)
    with pytest.raises(ValueError, match="queries, not cells"):
        demo_connector_spec("qformer", None, 2)


def test_cell_markers_mark_the_demo_projectors_grid_of_cells():
    from graft.pipelines.demo_settings import DemoSettings

    assert DemoSettings().connector_spec()["marker_grid"] == 4
    assert "marker_grid" not in DemoSettings(cell_markers=False).connector_spec()
    # one token per cell exports as Aya Vision, which has no markers
    others = (DemoSettings(cell_tokens=1), DemoSettings(connector="qformer"), DemoSettings(reduction="pool"))
    for other in others:
        assert not other.cell_markers_or_default() and "marker_grid" not in other.connector_spec()
    # the tiny Llama's 512-token context holds no several-image prompt at 64 tokens an image
    assert not DemoSettings(llm="tiny").cell_markers_or_default()
    assert DemoSettings(llm="tiny", cell_markers=True).cell_markers_or_default()
    assert DemoSettings(cell_tokens=1, cell_markers=True).connector_spec()["marker_grid"] == 4
    with pytest.raises(ValueError, match="drop --cell-markers"):
        DemoSettings(connector="qformer", cell_markers=True).connector_spec()
    with pytest.raises(ValueError, match="mark pixel_shuffle's grid of cells, not reduction 'pool'"):
        DemoSettings(reduction="pool", cell_markers=True).connector_spec()


def test_stage_2_can_train_on_some_kinds_of_records_alone(tmp_path):
    from graft.world.record_kinds import check_stage2_kinds, records_of_kinds

    path = tmp_path / "stage2.json"
    records = [{"id": str(i), "qtype": kind} for i, kind in enumerate(["questions", "caption", "questions"])]
    path.write_text(json.dumps(records))
    assert [r["id"] for r in records_of_kinds(path, "questions")] == ["0", "2"]
    assert len(records_of_kinds(path, " questions, caption ")) == 3
    assert records_of_kinds(path, "all") == records and len(check_stage2_kinds("all")) == 7
    with pytest.raises(ValueError, match="record kinds question: give one or more of questions.*, or all"):
        check_stage2_kinds("question")
    with pytest.raises(ValueError, match="stage2.json: no records of kind detail; it has caption, questions"):
        records_of_kinds(path, "questions,detail")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--stage2-kinds", "chat"])
    assert result.exit_code == 2 and "stage-2 record kinds chat" in result.output
    assert not (tmp_path / "d").exists()
