"""``graft demo`` end to end on a tiny world: every step runs, the summary has its keys, a rerun
reuses every finished step."""

import json

from typer.testing import CliRunner

from graft.cli import app


def test_demo_runs_end_to_end_and_reuses_finished_steps(tmp_path):
    args = ["-q", "demo", "--out", str(tmp_path), "--images", "60", "--vision-steps", "2", "--llm-steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("binary/accuracy", "mcq/accuracy", "binary/accuracy_blind", "mcq/accuracy_blind"):
        assert 0.0 <= summary[key] <= 1.0
    assert any(k.startswith("qtype/binary_") for k in summary)
    steps = ("world", "backbones", "compose", "stage1", "stage2", "eval")
    assert all(summary[f"time/{s}_s"] >= 0 for s in steps)
    assert (tmp_path / "summary.md").read_text().startswith("# graft demo")
    assert (tmp_path / "report" / "report.html").exists()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert all(f"[{s}] reused" in again.output for s in steps)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
