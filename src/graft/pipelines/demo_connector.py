"""The demo's connector (``graft demo --connector``): a projector whose 4x4 pixel shuffle turns the
packaged tower's 16 x 16 patches into one token (or two) per image cell of the world's 4 x 4 grid,
or a Q-Former at the tiny backbones' scale."""

from __future__ import annotations

from typing import Any

#: the shapes world's Q-Former: BLIP-2's design at the tiny backbones' scale (16 queries, as many
#: tokens as a projector's one token per cell of the 4x4 grid)
SHAPES_QFORMER: dict[str, Any] = {
    "name": "qformer",
    "num_query_tokens": 16,
    "qformer_config": {
        "hidden_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 384,
        "cross_attention_frequency": 1,
    },
}
DEMO_CONNECTORS = ("swiglu", "lexical", "mlp2x_gelu", "linear", "qformer")
#: k x k token reduction of the demo's projectors: the packaged tower's 16 x 16 patches -> 16 tokens
DEMO_REDUCTION = 4
#: the side of the grid of cells that reduction leaves (the packaged tower's 16 patches a side / 4)
DEMO_GRID = 4


def demo_connector_spec(
    connector: str, reduction: str | None = None, cell_tokens: int = 1, margin: int = 0, markers: bool = False
) -> dict[str, Any]:
    """The demo's connector: a projector (4x4 pixel shuffle unless told: nanoVLM's and SmolVLM's
    space-to-depth, which keeps every patch's features; ``swiglu`` layer-normed first, as Aya
    Vision's adapter, so the model exports to ``AyaVisionForConditionalGeneration``; ``cell_tokens``
    tokens per cell; a cell's input also reads ``margin`` rings of patches around it; with
    ``markers`` its row's and column's markers follow its tokens) or the shapes-sized Q-Former."""
    if not isinstance(margin, int) or margin < 0:
        raise ValueError(f"a cell margin is a count of rings of patches (>= 0), not {margin!r}")
    if connector == "qformer":
        if reduction not in (None, "none"):
            raise ValueError("the qformer connector sets its own token count (queries): use --reduction none")
        if cell_tokens != 1:
            raise ValueError("the qformer connector's tokens are queries, not cells: use --cell-tokens 1")
        if margin:
            raise ValueError("the qformer connector reads every patch: use --cell-margin 0")
        if markers:
            raise ValueError("the qformer connector's tokens are queries, not cells: drop --cell-markers")
        return dict(SHAPES_QFORMER)
    if connector not in DEMO_CONNECTORS:
        hint = " (VPG-C guides a trained Q-Former: run `graft ablation`)" if connector == "vpgc" else ""
        raise ValueError(f"the demo grafts with one of {', '.join(DEMO_CONNECTORS)}, not {connector!r}{hint}")
    spec: dict[str, Any] = {"name": connector}
    if (reduction or "pixel_shuffle") != "none":
        spec.update(reduction=reduction or "pixel_shuffle", reduction_factor=DEMO_REDUCTION)
    if connector in ("swiglu", "lexical"):
        spec["layer_norm"] = True
    if cell_tokens not in (1, 2):
        raise ValueError(f"a cell gives one token or two (colour, then shape), not {cell_tokens}")
    if cell_tokens != 1:
        spec["tokens_per_group"] = cell_tokens
    if margin:
        if spec.get("reduction") != "pixel_shuffle":
            raise ValueError(f"a cell margin widens pixel_shuffle's cells, not reduction {reduction!r}")
        spec["reduction_margin"] = margin
    if markers:
        if spec.get("reduction") != "pixel_shuffle":
            raise ValueError(f"cell markers mark pixel_shuffle's grid of cells, not reduction {reduction!r}")
        # after each cell's words, where the world's position replies copy them from (an object's
        # words, then its digits: ``graft.world.questions.cells_named``)
        spec.update(marker_grid=DEMO_GRID, markers_after=True)
    return spec
