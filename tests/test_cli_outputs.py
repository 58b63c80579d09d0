"""What the model-writing verbs do with their --out folder and their inputs: a non-empty --out is
refused unless --overwrite (then replaced whole), a missing or empty source folder is named as such,
and -q turns every progress bar off for its command only."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graft.cli import app
from graft.export import export_hf

from tiny import save_tiny_backbones, tiny_model_and_processor

torch.set_num_threads(1)


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _refused(result, *said: str) -> None:
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    for text in said:
        assert text in result.output, result.output


def _trained_looking(folder: Path) -> dict[str, bytes]:
    """A folder that holds a run's files beside its model (what a user must not lose by accident)."""
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text("max_steps: 4\n")
    (folder / "log.jsonl").write_text('{"step": 1}\n')
    (folder / "checkpoint-4").mkdir()
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A transformers LLaVA folder (what export-hf writes) for import-hf."""
    root = tmp_path_factory.mktemp("exported")
    model, processor = tiny_model_and_processor()
    model.save_pretrained(root / "graft")
    processor.save_pretrained(root / "graft")
    return export_hf(root / "graft", root / "hf")


def test_compose_refuses_a_non_empty_out_and_replaces_it_whole_with_overwrite(backbones, tmp_path):
    vision, llm = backbones
    out = tmp_path / "run"
    before = _trained_looking(out)
    args = ["compose", "--vision", vision, "--llm", llm, "--out", out]
    _refused(_run(*args), f"--out {out} exists and is not empty; pass --overwrite to replace it")
    assert _files(out) == before
    # names are still checked first: a typo fails before --out (and before any weights load)
    _refused(_run(*args, "--template", "vicuna"), "unknown template 'vicuna'")
    result = _run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "config.json" in names and not names & {"recipe.yaml", "log.jsonl", "checkpoint-4"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temporary left


def test_compose_out_that_is_a_file_and_a_source_that_is_no_folder(backbones, tmp_path):
    vision, llm = backbones
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(
        _run("compose", "--vision", vision, "--llm", llm, "--out", afile),
        f"--out {afile} is a file; give a folder",
    )
    gone = tmp_path / "gone"
    _refused(
        _run("compose", "--vision", vision, "--llm", gone, "--out", tmp_path / "m"),
        f"the LLM '{gone}': no such folder (nor is it a hub id",
    )
    _refused(  # a name the hub could hold is said to have been looked for there
        _run("compose", "--vision", vision, "--llm", "someone/no-such-llm", "--out", tmp_path / "m"),
        "the LLM 'someone/no-such-llm' (no such local folder, so it was read as a hub id)",
    )
    assert not (tmp_path / "m").exists()


def test_import_hf_refuses_a_non_empty_out_unless_overwrite(exported, tmp_path):
    out = tmp_path / "imp"
    before = _trained_looking(out)
    args = ["import-hf", "--model", exported, "--out", out]
    result = _run(*args)
    _refused(result, f"--out {out} exists and is not empty; pass --overwrite to replace it")
    assert "overwrite=True" not in result.output
    assert _files(out) == before
    result = _run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert "config.json" in names and "recipe.yaml" not in names


def test_import_hf_names_a_missing_or_empty_model_folder(tmp_path):
    gone = tmp_path / "nonexist"
    result = _run("import-hf", "--model", gone, "--out", tmp_path / "a")
    _refused(result, f"{gone}: no such folder")
    assert "Repo id" not in result.output
    empty = tmp_path / "emptyd"
    empty.mkdir()
    result = _run("import-hf", "--model", empty, "--out", tmp_path / "b")
    _refused(result, f"{empty}: no config.json")
    assert "model_type" not in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quiet_turns_off_every_progress_bar_for_its_command_only():
    import huggingface_hub.utils as hub
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as std_tqdm
    from transformers.utils import logging as hf_logging

    def state():
        return (
            hf_logging.is_progress_bar_enabled(),
            hub.are_progress_bars_disabled(),
            vars(std_tqdm)["__init__"],
        )

    @app.command("probe-bars-for-test", hidden=True)
    def probe() -> None:
        for _ in tqdm(range(2), desc="plain-bar", disable=False):  # as transformers' GGUF reader
            pass
        for _ in hf_logging.tqdm(range(2), desc="hf-bar"):
            pass

    before = state()
    try:
        quiet = CliRunner().invoke(app, ["-q", "probe-bars-for-test"])
        assert state() == before
        plain = CliRunner().invoke(app, ["probe-bars-for-test"])
        assert state() == before
    finally:
        app.registered_commands.pop()
    assert quiet.exit_code == 0 and plain.exit_code == 0, quiet.output + plain.output
    assert "plain-bar" not in quiet.output and "hf-bar" not in quiet.output
    assert "plain-bar" in plain.output  # without -q the bars are there
