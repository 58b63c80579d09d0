"""The shapes world: procedural images with exact symbolic descriptions, the offline
instruction writer, and tiny backbones pretrained on it. The graft core never imports this
package; only the CLI does."""

from .build import WORLD_VERSION, build_world
from .describe import boxes, captions, context_text
from .instructions import SYSTEM
from .scene import COLORS, SHAPES, SIZES, Obj, Scene, place_object, sample_scene

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "SYSTEM",
    "WORLD_VERSION",
    "Obj",
    "Scene",
    "boxes",
    "build_world",
    "captions",
    "context_text",
    "place_object",
    "sample_scene",
]
