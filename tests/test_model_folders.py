"""A saved graft model folder is checked before it loads (``graft.inference.check_model_folder``),
by export-hf and every inference verb alike; export-hf's --out and --overwrite; exported folders get
the modes the umask gives."""

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft import inference
from graft.cli import app
from graft.export import export_hf
from graft.files import atomic_dir

from tiny import tiny_model_and_processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "graft"
    model, processor = tiny_model_and_processor("linear")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "graft"))


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_clean_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # fail(), not a traceback
    assert "error: " in result.output and "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.mark.parametrize(
    "removed",
    [
        "model.safetensors",
        "graft_processor.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ],
)
def test_a_missing_file_is_named_by_the_loader_export_hf_and_the_inference_verbs(
    model_dir, tmp_path, removed
):
    (model_dir / removed).unlink()
    for load in (inference.check_model_folder, inference.load_model_folder, inference.load_for_inference):
        with pytest.raises(FileNotFoundError, match=rf"{model_dir}.* missing {removed}"):
            load(model_dir)
    _assert_clean_error(
        _cli("export-hf", "--model", model_dir, "--out", tmp_path / "hf"), str(model_dir), removed
    )
    _assert_clean_error(_cli("chat", "--model", model_dir, "--prompt", "hi"), str(model_dir), removed)
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_no_such_folder_and_a_file_are_clear_errors_in_export_hf(tmp_path):
    gone = tmp_path / "nonexist"
    _assert_clean_error(
        _cli("export-hf", "--model", gone, "--out", tmp_path / "hf"), f"{gone}: no such folder"
    )
    a_file = tmp_path / "model.txt"
    a_file.write_text("x")
    _assert_clean_error(_cli("export-hf", "--model", a_file, "--out", tmp_path / "hf"), "is a file")
    with pytest.raises(FileNotFoundError, match="is a file"):
        inference.load_for_inference(a_file)


def test_a_sharded_folder_loads_and_a_missing_shard_is_named(saved, tmp_path):
    model, processor = inference.load_model_folder(saved)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="100KB")
    processor.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").exists() and not (folder / "model.safetensors").exists()
    inference.load_model_folder(folder)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing {shard.name} \(listed in model.safetensors.index"):
        inference.check_model_folder(folder)


def test_a_truncated_weight_file_is_a_value_error_naming_it(model_dir, tmp_path):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights}: unreadable"):
        inference.load_model_folder(model_dir)
    _assert_clean_error(_cli("export-hf", "--model", model_dir, "--out", tmp_path / "hf"), str(weights))


def test_a_transformers_folder_is_not_a_graft_model_and_says_to_import_it(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type='llava', not a graft model.*graft import-hf"):
        inference.check_model_folder(model_dir)


def test_export_hf_reruns_need_overwrite_and_out_must_be_a_folder(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "hf"
    result = _cli("export-hf", "--model", model_dir, "--out", out)
    assert result.exit_code == 0 and "LlavaForConditionalGeneration" in result.output, result.output
    first = (out / "model.safetensors").stat().st_ino

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before --out was checked")

    with monkeypatch.context() as m:
        m.setattr("graft.export.writer.load_model_folder", no_load)
        _assert_clean_error(
            _cli("export-hf", "--model", model_dir, "--out", out), f"--out {out}", "--overwrite"
        )
        a_file = tmp_path / "afile"
        a_file.write_text("keep")
        _assert_clean_error(
            _cli("export-hf", "--model", model_dir, "--out", a_file), f"--out {a_file}", "file"
        )
        assert a_file.read_text() == "keep"
        _assert_clean_error(
            _cli("export-hf", "--model", model_dir, "--out", model_dir, "--overwrite"), "itself"
        )
    assert (out / "model.safetensors").stat().st_ino == first  # untouched

    result = _cli("export-hf", "--model", model_dir, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").stat().st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "graft", "hf"]  # no temp folder left


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_an_export_gets_the_modes_of_a_plain_mkdir_and_open(model_dir, tmp_path, mask):
    with umask(mask):
        out = export_hf(model_dir, tmp_path / "deep" / "hf")
    assert _mode(out) == 0o777 & ~mask
    assert _mode(out / "model.safetensors") == _mode(out / "config.json") == 0o666 & ~mask


def test_atomic_dir_widens_private_temp_files_and_keeps_exec_bits(tmp_path):
    with umask(0o022), atomic_dir(tmp_path / "out", overwrite=False) as tmp:
        (tmp / "private").write_text("x")
        (tmp / "private").chmod(0o600)  # as safetensors' tempfile leaves its files
        (tmp / "run.sh").write_text("x")
        (tmp / "run.sh").chmod(0o700)
        (tmp / "sub").mkdir(mode=0o700)
    out = tmp_path / "out"
    assert (_mode(out), _mode(out / "private"), _mode(out / "run.sh"), _mode(out / "sub")) == (
        0o755,
        0o644,
        0o755,
        0o755,
    )


def test_atomic_dir_removes_a_killed_runs_temp_folder_but_not_a_live_ones(tmp_path):
    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.tmp-killed"  # another folder's: not ours to remove
    other.mkdir()
    with atomic_dir(tmp_path / "out", overwrite=True) as live:
        assert not stale.exists() and other.exists()
        with atomic_dir(tmp_path / "out", overwrite=True) as second:
            assert live.exists() and second != live  # locked by the running writer: kept
            (second / "a").write_text("second")
        (live / "a").write_text("first")
    assert (tmp_path / "out" / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-killed", "out"]


def test_trained_and_composed_models_are_not_private(tmp_path):
    from graft.backbones import save_composed
    from graft.train.checkpoint import save_final

    model, processor = tiny_model_and_processor("linear")
    with umask(0o022):
        save_final(model, processor, tmp_path / "trained")
        save_composed(model, processor.tokenizer, processor.image_processor, tmp_path / "composed")
    for folder in ("trained", "composed"):
        assert _mode(tmp_path / folder / "model.safetensors") == 0o644, folder
