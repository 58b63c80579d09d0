"""Shared by the reader tests (test_readers_*.py): small images where a benchmark's layout puts them."""

from PIL import Image


def _img(path, colour=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)
    return path
