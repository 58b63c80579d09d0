import json
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from graft.cli import app

VERBS = [
    "world",
    "backbones",
    "compose",
    "compose-blip2",
    "train",
    "inspect",
    "chat",
    "predict",
    "evaluate",
    "eval",
    "score",
    "export-hf",
    "import-hf",
    "import-gguf",
    "demo",
    "report",
    "ablation",
    "adapt",
    "eval-expert",
    "gen-data",
    "mix",
    "snap",
    "pairs",
    "plan",
    "serve",
]


def test_verbs_list_every_registered_command():
    assert sorted(VERBS) == sorted(command.name for command in app.registered_commands)


def test_top_level_help_lists_every_verb():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.output


def test_command_list_reflows_docstrings_and_keeps_angle_brackets():
    # A docstring's line breaks are not the terminal's: the list shows each summary as one paragraph.
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    lines = [line for line in result.output.splitlines() if line.startswith("│ ") and line.split()[1:]]
    rows = {line.split()[1]: line for line in lines}
    assert "snap and a perception warm-up; or a caption stage 1" in rows["demo"]
    assert "Refer to images with <image> in a turn" in rows["chat"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    result = CliRunner().invoke(app, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_compose_help_names_every_registered_connector():
    from graft.connectors import CONNECTORS

    command = typer.main.get_command(app).commands["compose"]
    text = next(p.help for p in command.params if p.name == "connector")
    assert all(name in text.replace(",", " ").split() for name in CONNECTORS), text


def test_compose_unknown_template_fails_before_loading(tmp_path):
    result = CliRunner().invoke(
        app, ["compose", "--vision", "x", "--llm", "y", "--out", str(tmp_path), "--template", "vicuna"]
    )
    assert result.exit_code != 0
    assert "unknown template 'vicuna'" in result.output


def test_compose_unknown_connector_names_valid_ones(tmp_path):
    from tiny import save_tiny_backbones

    vision, llm = save_tiny_backbones(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "compose",
            "--vision",
            str(vision),
            "--llm",
            str(llm),
            "--out",
            str(tmp_path / "m"),
            "--connector",
            "mlp9",
        ],
    )
    assert result.exit_code != 0
    assert "valid connectors" in result.output


def test_compose_writes_the_tokens_per_group_it_is_asked_for(tmp_path):
    from tiny import save_tiny_backbones

    vision, llm = save_tiny_backbones(tmp_path)
    base = ["compose", "--vision", str(vision), "--llm", str(llm), "--reduction", "pixel_shuffle"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "m"), "--tokens-per-group", "2"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["connector"]["tokens_per_group"] == 2 and "tokens per image" in result.output
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "n"), "--tokens-per-group", "0"])
    assert result.exit_code == 2 and "tokens_per_group must be a positive integer, got 0" in result.output
    assert not (tmp_path / "n").exists()
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "w"), "--reduction-margin", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "w" / "config.json").read_text())["connector"]["reduction_margin"] == 1
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "v"), "--reduction-margin", "-1"])
    assert result.exit_code == 2 and "reduction margin -1" in result.output
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "k"), "--marker-grid", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "k" / "config.json").read_text())["connector"]["marker_grid"] == 2
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "j"), "--marker-grid", "3"])
    assert result.exit_code == 2 and "marker_grid=3 marks a 3x3 grid of groups" in result.output


def test_compose_says_which_backbone_failed_to_load(tmp_path):
    from tiny import save_tiny_backbones

    vision, llm = save_tiny_backbones(tmp_path)
    (tmp_path / "empty").mkdir()
    for args, said in (
        (["--vision", str(vision), "--llm", str(tmp_path / "empty")], f"the LLM '{tmp_path / 'empty'}': "),
        (
            ["--vision", str(tmp_path / "gone"), "--llm", str(llm)],
            f"the vision tower '{tmp_path / 'gone'}': no such folder (nor is it a hub id",
        ),
    ):
        result = CliRunner().invoke(app, ["compose", *args, "--out", str(tmp_path / "m")])
        assert result.exit_code == 2 and said in result.output, result.output
        assert not (tmp_path / "m").exists()


def _composed_and_image(tmp_path) -> tuple:
    """``graft compose`` of tiny backbones (checked) and an image beside it."""
    from tiny import random_image, save_tiny_backbones

    vision, llm = save_tiny_backbones(tmp_path)
    out = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["compose", "--vision", str(vision), "--llm", str(llm), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    image = tmp_path / "a.png"
    random_image().save(image)
    return out, image


def test_compose_then_chat_round_trip(tmp_path):
    out, image = _composed_and_image(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "chat",
            "--model",
            str(out),
            "--image",
            str(image),
            "--prompt",
            "What is it?",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output


def test_chat_reset_keeps_the_command_line_images(tmp_path, monkeypatch):
    from graft.generate import ChatSession

    out, image = _composed_and_image(tmp_path)
    seen = []

    def ask(self, text, images=None, **changes):
        seen.append((text, len(images or []), len(self.messages)))
        self.messages += [text, "ok"]
        return "ok"

    monkeypatch.setattr(ChatSession, "ask", ask)
    turns = "What is it?\n/image nowhere.png\nAnd its colour?\n/reset\nWhat is it now?\n\n"
    result = CliRunner().invoke(app, ["chat", "--model", str(out), "--image", str(image)], input=turns)
    assert result.exit_code == 0, result.output
    # the image goes with the first turn of each conversation; /reset empties the history
    assert seen == [("What is it?", 1, 0), ("And its colour?", 0, 2), ("What is it now?", 1, 0)]
    assert "(new conversation: --image attaches to your next turn)" in result.output
    assert "error: image not found: nowhere.png" in result.output  # and the conversation went on

    # commands are never asked of the model; /quit ends the session
    seen.clear()
    turns = f"/help\n/image\n/image {image}\nWhat now?\n/whoami\n/quit\nnever asked\n"
    result = CliRunner().invoke(app, ["chat", "--model", str(out)], input=turns)
    assert result.exit_code == 0, result.output
    assert seen == [("What now?", 1, 0)]
    assert "commands: /image PATH" in result.output and "error: /image needs a path" in result.output
    assert "(1 image(s) attached to your next turn)" in result.output
    assert "error: unknown command /whoami" in result.output

    missing = CliRunner().invoke(app, ["chat", "--model", str(out), "--image", "gone.png", "--prompt", "hi"])
    assert missing.exit_code == 2 and "error: --image: image not found: gone.png" in missing.output
    monkeypatch.undo()  # the real ask: two markers and no image
    marker = CliRunner().invoke(app, ["chat", "--model", str(out), "--prompt", "<image> and <image>?"])
    assert marker.exit_code == 2 and "error: --prompt:" in marker.output, marker.output


def test_chat_keeps_attached_images_when_a_turn_fails(tmp_path, monkeypatch):
    from graft.cli import inference
    from graft.generate import ChatSession
    from graft.prompts import ImageMarkerError
    from graft.templates import get_template

    from tiny import random_image

    image = tmp_path / "my picture.png"
    random_image().save(image)
    seen = []

    def ask(self, text, images=None, **changes):
        seen.append((text, len(images or [])))
        if text.count("<image>") > len(images or []):
            raise ImageMarkerError("turn 1: too many markers")
        if text == "Long story?":
            raise KeyboardInterrupt  # Ctrl-C while the model answers
        return "ok"

    processor = SimpleNamespace(template=get_template("vicuna_v1"))
    monkeypatch.setattr(inference, "_load", lambda model, bf16=False: (None, processor))
    monkeypatch.setattr(ChatSession, "ask", ask)
    turns = [
        f"/image '{image}' ",  # in quotes, as a terminal pastes a dragged-in file whose name has a space
        "<image> and <image>?",
        "What is it?",
        "Long story?",
        "And now?",
        f"/image {image}",
        "/reset",
        "Hi",
    ]
    result = CliRunner().invoke(app, ["chat", "--model", str(tmp_path)], input="\n".join(turns) + "\n")
    assert result.exit_code == 0, result.output
    # the image attached before the failed turn goes with the retry, and survives a /reset
    asked = ["<image> and <image>?", "What is it?", "Long story?", "And now?", "Hi"]
    assert seen == list(zip(asked, [1, 1, 0, 0, 1], strict=True))
    assert "error: turn 1: too many markers\n(1 image(s) still attached to your next turn)" in result.output
    assert "(answer interrupted; the turn is not kept)" in result.output  # and the session went on
    assert "note:" not in result.output
    # a pre-training (plain) model reads no words: the user is told so, not left guessing
    processor.template = get_template("plain")
    result = CliRunner().invoke(app, ["chat", "--model", str(tmp_path), "--prompt", "Hi"])
    assert result.exit_code == 0 and "note: this model's template is plain" in result.output


def test_load_for_inference_raises_and_the_verbs_say_why(tmp_path):
    from graft.inference import load_for_inference

    with pytest.raises(FileNotFoundError, match="is not a model folder"):  # library code can catch it
        load_for_inference(tmp_path)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "1", "question": "hi"}\n')
    for args in (
        ["chat", "--prompt", "hi"],
        ["predict", "--questions", str(questions), "--out", str(tmp_path / "p.jsonl")],
        ["evaluate", "--questions", str(questions)],
    ):
        result = CliRunner().invoke(app, [*args, "--model", str(tmp_path)])
        assert result.exit_code == 2, (args, result.output)
        assert f"error: {tmp_path} is not a model folder (no config.json)" in result.output


def test_graft_logs_info_and_other_libraries_only_warnings():
    import subprocess
    import sys

    script = (
        "import logging; from graft.logs import configure_logging; configure_logging(); "
        "logging.getLogger('matplotlib.font_manager').info('generated new fontManager'); "
        "logging.getLogger('httpx').info('HTTP Request: POST'); "
        "logging.getLogger('graft.train.loop').info('saved the trained model'); "
        "logging.getLogger('accelerate').warning('a library warning')"
    )
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stderr
    assert "INFO graft.train.loop: saved the trained model" in err
    assert "WARNING accelerate: a library warning" in err
    assert "fontManager" not in err and "HTTP Request" not in err


def test_quiet_turns_progress_bars_off_for_its_command_only(monkeypatch):
    import os

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    seen = {}

    @app.command("probe-env-for-test", hidden=True)
    def probe() -> None:
        seen["during"] = os.environ.get("TQDM_DISABLE")

    try:
        result = CliRunner().invoke(app, ["-q", "probe-env-for-test"])
    finally:
        app.registered_commands.pop()
    assert result.exit_code == 0, result.output
    assert seen["during"] == "1" and "TQDM_DISABLE" not in os.environ
