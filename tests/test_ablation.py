"""``graft ablation`` end to end on a tiny world, and ``graft demo --connector`` choices."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app


def test_ablation_runs_every_row_and_reuses_the_demo_world(tmp_path, monkeypatch):
    demo, out = tmp_path / "demo", tmp_path / "ablation"
    monkeypatch.chdir(tmp_path)  # relative folders, as the README's `graft ablation` after `make demo`
    args = ["-q", "ablation", "--out", "ablation", "--demo", "demo", "--images", "60"]
    args += "--llm tiny --vision train --vision-steps 2 --llm-steps 2 --train-pairs 12 --test-pairs 6".split()
    args += "--vpgc-steps 2 --stage1-steps 2 --stage2-steps 2 --eval-limit 6 --mix 3:1:1".split()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (demo / "world" / "world.json").exists() and (demo / "backbones" / "llm").is_dir()
    # one feature cache, the demo's, for every row (its entries are keyed by the tower's fingerprint)
    assert (demo / "feature_cache").is_dir() and not list(out.glob("**/feature_cache"))
    summary = json.loads((out / "summary.json").read_text())
    for row in ("qformer", "vpgc_captions", "vpgc_pairs"):
        for metric in ("binary/accuracy", "mcq/accuracy", "which_image/accuracy"):
            assert 0.0 <= summary[f"{row}/{metric}"] <= 1.0
        assert 0.0 <= summary[f"{row}/difference/rouge_l"] <= 100.0
    pairs = [json.loads(line) for line in (out / "pairs" / "train" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["edit"]["selection"] == "attention" for p in pairs)
    assert (demo / "world" / pairs[0]["images"][1]).exists()  # paths relative to the world
    # the pairs row's third source: which of a pair's two images shows what the edit left in one
    which = [json.loads(line) for line in (out / "pairs" / "train" / "which.jsonl").read_text().splitlines()]
    edited = [p for p in pairs if p["edit"]["only_in"] != [[], []]]
    assert len(which) == len(edited) > 0 and {w["id"] for w in which} == {f"{p['id']}-which" for p in edited}
    assert yaml.safe_load((out / "vpgc_pairs" / "recipe.yaml").read_text())["data"]["train"][2].endswith(
        "which.jsonl"
    )
    config = json.loads((out / "vpgc_pairs" / "config.json").read_text())
    assert config["connector"]["name"] == "vpgc" and config["connector"]["vpg"]["name"] == "qformer"
    assert yaml.safe_load((out / "vpgc_pairs" / "recipe.yaml").read_text())["data"]["mix"] == [3.0, 1.0, 1.0]
    assert "| vpgc_pairs |" in (out / "summary.md").read_text()
    # the frozen LLM's which-image text bound, once: the same LLM in every row
    for key in ("accuracy_text", "accuracy_text_lenient"):
        assert 0.0 <= summary[f"text_bound/which_image/{key}"] <= 1.0
    assert "Which-image text bound" in (out / "summary.md").read_text()
    # the base is trained by the demo's steps and measured once, beside the VPG-C rows
    assert not (out / "qformer" / "metrics.json").exists() and not (out / "qformer" / "curve.jsonl").exists()
    base_steps = json.loads((out / "qformer" / "steps.json").read_text())
    # Cheetah's base is BLIP-2's: in stage 2 too its Q-Former learns and its LLM stays frozen
    base_recipe = yaml.safe_load((out / "qformer" / "stage2" / "recipe.yaml").read_text())
    assert base_recipe["llm"]["mode"] == "frozen" and base_recipe["connector"]["mode"] == "full"
    assert summary["time/qformer_base_s"] == pytest.approx(sum(base_steps.values()), abs=0.01)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "[vpgc_pairs] reused" in again.output
    # other settings in the same folder would reuse rows trained otherwise: refused, named
    other = CliRunner().invoke(app, [*args, "--vpgc-steps", "3"])
    assert other.exit_code == 2 and "vpgc_steps=2" in other.output and "vpgc_steps=3" in other.output
    # the base's settings too, named on the ablation's folder: its rows were trained on that base
    other = CliRunner().invoke(app, [*args, "--seed", "1"])
    assert other.exit_code == 2 and "base.seed=0" in other.output and "ablation holds" in other.output
    # a folder from before settings.json: the base's folder refuses first, and this one stays unclaimed
    (out / "settings.json").unlink()
    other = CliRunner().invoke(app, [*args, "--seed", "1"])
    assert other.exit_code == 2 and "qformer holds" in other.output and not (out / "settings.json").exists()


@pytest.mark.parametrize("mix", ["64", "a:b", "0:1:1", "1:-2:1", "1:2", "1:2:3:4"])
def test_ablation_refuses_a_bad_mix_before_any_work(tmp_path, mix):
    result = CliRunner().invoke(app, ["ablation", "--out", str(tmp_path / "a"), "--mix", mix])
    assert result.exit_code == 2 and "--mix" in result.output and "CAPTIONS:PAIRS:WHICH" in result.output
    assert not any(tmp_path.iterdir())


def test_demo_connector_choices_are_checked_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--connector", "vpgc"])
    assert result.exit_code == 2 and "graft ablation" in result.output
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--connector", "qformer", "--reduction", "pool"]
    )
    assert result.exit_code == 2 and "--reduction none" in result.output
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--ground-cells", "middle"])
    assert result.exit_code == 2 and "--ground-cells middle: give one of cover, centre" in result.output
    assert not any(tmp_path.iterdir())
