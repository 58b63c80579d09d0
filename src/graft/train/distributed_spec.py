"""The recipe's ``distributed`` section (``DistributedSpec``): which strategy and which config file;
``graft.train.distributed`` sets it up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("ddp", "zero2", "zero3", "zero3_offload", "fsdp2")
ZERO_STAGES = {"zero2": 2, "zero3": 3, "zero3_offload": 3}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "distributed"


@dataclass
class DistributedSpec:
    #: ddp | zero2 | zero3 | zero3_offload | fsdp2
    strategy: str = "ddp"
    #: a DeepSpeed JSON (zero*) or FSDP2 YAML (fsdp2) used instead of the one graft ships
    config: str | None = None

    @property
    def deepspeed(self) -> bool:
        return self.strategy in ZERO_STAGES

    def config_file(self) -> Path | None:
        if self.strategy == "ddp":
            return None
        if self.config is not None:
            return Path(self.config)
        return CONFIG_DIR / f"{self.strategy}.{'yaml' if self.strategy == 'fsdp2' else 'json'}"
