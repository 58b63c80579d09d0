"""Shared by the graft gen-data tests (test_gen_data_*.py): context rows and files, settings
against an endpoint, the CLI verb, and the ``server`` fixture, a fake OpenAI-compatible endpoint
(tests/fake_gen_server.py) on a free loopback port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import graft.cli.gen_data  # noqa: F401  (registers the verb)
from graft.cli.app import app
from graft.instruct.gen_settings import GenSettings

from fake_gen_server import FakeGenServer, serve_in_thread


def _row(i: int, marker: str = "") -> dict:
    caption = f"A red circle and a blue square, scene {i}. {marker}".strip()
    boxes = [
        {"category": "red circle", "bbox": [0.1, 0.2, 0.3, 0.4]},
        {"category": "blue square", "bbox": [0.6, 0.55, 0.85, 0.8]},
    ]
    return {
        "id": f"c{i:03d}",
        "image": f"images/{i}.png",
        "captions": [caption, "Two shapes."],
        "boxes": boxes,
    }


def _contexts(tmp_path: Path, markers: list[str], name: str = "contexts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(_row(i, m)) + "\n" for i, m in enumerate(markers)))
    return path


def _settings(tmp_path: Path, url: str, markers: list[str], **kw) -> GenSettings:
    base = dict(model="fake-gen", base_url=url, backoff_s=0.01, types=("conversation",))
    return GenSettings(contexts=_contexts(tmp_path, markers), out=tmp_path / "out", **(base | kw))


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["gen-data", *args], env=env)


@pytest.fixture
def server():
    fake = FakeGenServer()
    with serve_in_thread(fake) as url:
        fake.url = url
        yield fake
