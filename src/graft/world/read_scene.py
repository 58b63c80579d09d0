"""A rendered shapes scene read back from its pixels: the oracle's way to describe renders that
no metadata row names (the DEMON benchmark's edited scenes and sequences).

``Scene.render`` paints each object in one exact colour on a plain background without
anti-aliasing, and objects never touch, so every object is one connected patch of its colour:
its box gives place and size, how much of the box it fills gives the shape (square 1, circle
about 0.79, triangle and diamond about 0.5, told apart by the bottom row: a triangle's is its
widest). Positions come back to within a pixel. An image with any other colour is no render.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .scene import BACKGROUND, COLORS, SIZES, Obj, Scene


def scene_from_render(image: Image.Image) -> Scene | None:
    """The scene ``image`` is a render of, or None when it is not a shapes-world render."""
    from scipy import ndimage

    pixels = np.asarray(image.convert("RGB"))
    side = pixels.shape[0]
    if pixels.shape[1] != side:
        return None
    known = np.all(pixels == BACKGROUND, axis=-1)
    objects = []
    for color, rgb in COLORS.items():
        mask = np.all(pixels == rgb, axis=-1)
        known |= mask
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            rows, cols = found
            patch = labels[found] == index
            h, w = rows.stop - rows.start, cols.stop - cols.start
            fill = patch.sum() / (h * w)
            if fill > 0.92:
                shape = "square"
            elif fill > 0.65:
                shape = "circle"
            else:
                shape = "triangle" if patch[-1].sum() > w / 2 else "diamond"
            size = min(SIZES, key=lambda s: abs(2 * SIZES[s] * side - w))
            x = round((cols.start + cols.stop) / (2 * side), 4)
            y = round((rows.start + rows.stop) / (2 * side), 4)
            objects.append(Obj(shape, color, size, x, y))
    if not known.all() or not objects:
        return None
    objects.sort(key=lambda o: (o.y, o.x))
    return Scene(objects=objects, image_size=side)
