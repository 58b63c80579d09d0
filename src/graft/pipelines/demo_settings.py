"""What a demo run is told (``DemoSettings``, ``graft demo``'s options) and what follows from it:
the connector it composes, how that connector first learns (the alignment) and which stages
before stage 2 run (``graft.pipelines.demo`` runs them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.pipelines.demo_connector import demo_connector_spec


@dataclass
class DemoSettings:
    """Everything a demo run is told; the defaults are ``make demo``'s."""

    images: int = 8000
    seed: int = 0
    #: smollm2 (the packaged SmolLM2-135M-Instruct), tiny (a tiny Llama pretrained on the world,
    #: for smoke runs), a .gguf file or a causal-LM folder
    llm: str = "smollm2"
    #: packaged (the vision tower graft ships), train (pretrain one on the world: ~28 min on 2 cores) or a
    #: vision-tower folder
    vision: str = "packaged"
    #: the final model's connector (``demo_connector_spec``): swiglu exports to Aya Vision with one
    #: token per cell; lexical (soft tokens that are mixtures of the LLM's words) is snapped onto
    #: swiglu to export
    connector: str = "swiglu"
    #: how the connector first learns to hand the LLM the image (``ALIGNMENTS``; default
    #: ``default_alignment``): ground (LLM-free, each image cell's token onto the LLM's words for
    #: what the world's annotations put there, then a perception warm-up), words (the lexical
    #: connector's word alignment on captions, its snap onto swiglu, the warm-up) or captions
    #: (LLaVA's stage 1, at chance on the shapes world: README)
    alignment: str | None = None
    #: what the grounding's image cells name (``graft.world.labels.CELL_TARGETS``): centre (the
    #: object whose centre the cell holds: one token per object; the default with the packaged
    #: tower, refined for it) or cover (the object painting most of the cell; the default with any
    #: other tower)
    ground_cells: str | None = None
    reduction: str | None = None
    #: the kinds of ``stage2.json`` records stage 2 trains on (their ``qtype``: questions,
    #: conversation, reasoning, detail, which_image, difference, caption), comma-separated, or all;
    #: default ``stage2_kinds_or_default``
    stage2_kinds: str | None = None
    #: tokens per image cell of a projector (``tokens_per_group``; default ``tokens_per_cell``): 2
    #: says an object's colour and shape as two tokens (the grounding's colour word, then its shape
    #: word), 1 as one blend of both (what Aya Vision's export can represent)
    cell_tokens: int | None = None
    #: rings of patches around its own 4 x 4 that a cell's projector input also reads
    #: (``reduction_margin``; default ``cell_margin_or_default``): an object whose centre lies near
    #: a cell's border is then named in its own cell, not lost (the grounding's object cells:
    #: README)
    cell_margin: int | None = None
    #: each cell's tokens are followed by two markers, its row's and its column's, which the
    #: grounding sets to the LLM's digits (the projector's ``marker_grid``, ``markers_after``;
    #: default ``cell_markers_or_default``): where a cell lies is then something its tokens say,
    #: not something the LLM counts
    cell_markers: bool | None = None
    eval_limit: int | None = 200
    vision_steps: int | None = None
    llm_steps: int | None = None
    #: optimizer steps of each stage (default: the recipe's; ``demo_fits.GROUND_STEPS`` and
    #: ``SnapSettings.steps`` for the fits). Which stages run by default follows the alignment
    #: (``stages_wanted``); 0 skips a stage, a count asks for it
    ground_steps: int | None = None
    align_steps: int | None = None
    stage1_steps: int | None = None
    snap_steps: int | None = None
    perceive_steps: int | None = None
    stage2_steps: int | None = None
    #: stage 2 trains the connector and keeps the LLM frozen (BLIP-2's and Cheetah's way: the
    #: ablation's base) instead of tuning the LLM's top layers with the connector frozen
    frozen_llm: bool = False
    #: points of the learning curve: held-out accuracy (with images and blind) at this many
    #: evenly spaced steps of stage 2 besides step 0, on ``curve_limit`` questions per family (also
    #: the text upper bound's; 50, not 100, keeps `make demo` with its stage-2 steps within 20 min)
    curve_points: int = 2
    curve_limit: int | None = 50
    #: answer every task of the world's benchmark suite (``graft eval --bench``)
    bench: bool = True
    bench_limit: int | None = 50
    #: evaluate in bfloat16, as the recipes train (1.7x faster on a CPU with AVX512-BF16; fp32 where
    #: the CPU only emulates bf16: ``graft.precision``)
    bf16: bool = True
    #: the world, backbones and feature-cache folders (default: inside the run's folder; the
    #: ablation shares the demo's: cache entries are keyed by the tower's fingerprint)
    world: Path | None = None
    backbones: Path | None = None
    feature_cache: Path | None = None

    def world_dir(self, out: Path) -> Path:
        """The world's folder for a run in ``out``: ``world`` if given, else ``out/world``."""
        return self.world or out / "world"

    def cells(self) -> str:
        """``ground_cells``, or its default for this run's tower: the grounding's own
        (``grounding.CELLS``, what the packaged tower was refined for) or cover."""
        from graft.world.grounding import CELLS

        return self.ground_cells or (CELLS if self.vision == "packaged" else "cover")

    def tokens_per_cell(self) -> int:
        """``cell_tokens``, or its default: two where the grounding teaches a projector's cells
        (held-out binary 0.85 against one token's 0.78: README), else one."""
        if self.cell_tokens is not None:
            return self.cell_tokens
        return 2 if check_alignment(self.connector, self.alignment) == "ground" else 1

    def two_token_cells(self) -> bool:
        """Whether the cells are two tokens each by pixel shuffle: such a model exports only with
        graft's code (``graft.remote``) anyway, so the margin and the markers, which need the same,
        are its defaults."""
        return self.tokens_per_cell() == 2 and (self.reduction or "pixel_shuffle") == "pixel_shuffle"

    def cell_margin_or_default(self) -> int:
        """``cell_margin``, or its default: 1 for two tokens per cell by pixel shuffle
        (``two_token_cells``), else 0 (Aya Vision's adapter has no margin)."""
        return self.cell_margin if self.cell_margin is not None else int(self.two_token_cells())

    def cell_markers_or_default(self) -> bool:
        """``cell_markers``, or its default: with two tokens per cell by pixel shuffle
        (``two_token_cells``; README: What the demo measures today), but not on the tiny Llama,
        whose 512-token context cannot hold the benchmark suite's several-image prompts at 64 tokens
        an image."""
        if self.cell_markers is not None:
            return self.cell_markers
        return self.two_token_cells() and self.llm != "tiny"

    def connector_spec(self) -> dict[str, Any]:
        """The connector this run composes (``demo_connector_spec``)."""
        return demo_connector_spec(
            self.connector,
            self.reduction,
            self.tokens_per_cell(),
            self.cell_margin_or_default(),
            self.cell_markers_or_default(),
        )

    def stage2_kinds_or_default(self) -> str:
        """``stage2_kinds``, or its default: with two tokens per cell the question and conversation
        records (``TWO_TOKEN_KINDS``), else all."""
        from graft.world.record_kinds import ALL_KINDS, TWO_TOKEN_KINDS

        return self.stage2_kinds or (TWO_TOKEN_KINDS if self.tokens_per_cell() == 2 else ALL_KINDS)

    def warms_up(self) -> bool:
        """Whether the perception warm-up runs unless ``perceive_steps`` says: after the word
        alignment, and after the grounding with one token per cell (two answer better without it)."""
        alignment = check_alignment(self.connector, self.alignment)
        return alignment == "words" or (alignment == "ground" and self.tokens_per_cell() == 1)


#: how a demo's connector first learns (``DemoSettings.alignment``)
ALIGNMENTS = ("ground", "words", "captions")
#: the stages before stage 2, in order, and the alignments that run each by default
ALIGNMENT_STAGES = {
    "ground": ("ground",),
    "align": ("words",),
    "stage1": ("captions",),
    "snap": ("words",),
    "perceive": ("ground", "words"),  # unless DemoSettings.warms_up says not
}


def default_alignment(connector: str) -> str:
    """words for the lexical connector, captions for the Q-Former (whose tokens are no image
    cells), ground for the projectors."""
    return {"lexical": "words", "qformer": "captions"}.get(connector, "ground")


def check_alignment(connector: str, alignment: str | None) -> str:
    """The alignment a demo with ``connector`` runs; a ValueError for one it cannot."""
    chosen = alignment or default_alignment(connector)
    if chosen not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {chosen!r}; valid: {', '.join(ALIGNMENTS)}")
    if chosen == "ground" and connector == "qformer":
        raise ValueError(
            "the ground alignment teaches image cells' tokens; the qformer's are queries: use captions"
        )
    return chosen


def stages_wanted(alignment: str, steps: dict[str, int | None]) -> list[str]:
    """The stages before stage 2 that run: those ``alignment`` runs by default unless their
    ``steps`` is 0, and any other that ``steps`` gives a count."""
    return [
        stage
        for stage, runs_by in ALIGNMENT_STAGES.items()
        if (steps.get(stage) != 0 if steps.get(stage) is not None else alignment in runs_by)
    ]
