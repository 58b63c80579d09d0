"""Whether bfloat16 pays on a device. A run asked for bf16 (``precision: bf16``, evaluation's
``bf16``) computes in bf16 where the hardware does so natively and in fp32 elsewhere, with one
warning that says so.

Without AVX512-BF16 or AMX a CPU has no bf16 arithmetic, and PyTorch emulates it: on an AMD EPYC
(Zen 3, AVX2 only) ``benchmarks/bf16_speed.py`` measured a 512 x 576 by 576 x 1536 matmul at 7.5 ms
in fp32 and 779 ms in bf16, and a SmolLM2-sized decoder layer's forward and backward pass at 247
ms and 6.8 s; the demo's perception warm-up, 6.5 minutes on an EPYC with AVX512-BF16, did not
reach its tenth step in ten minutes there. Set ``GRAFT_EMULATED_BF16=1``
to compute in bf16 all the same (to check bf16 numerics on such a machine).
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

#: set to 1 to compute in bf16 even where the device only emulates it
FORCE_ENV = "GRAFT_EMULATED_BF16"
_warned: set[str] = set()


def cpu_has_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX)? True when this PyTorch cannot
    tell (its probes are private and may move): the request is then trusted."""
    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    known = [probe for probe in probes if probe is not None]
    return not known or any(probe() for probe in known)


def native_bf16(device: torch.device | str) -> bool:
    """Does ``device`` compute bf16 natively? CUDA by its compute capability, the CPU by its
    instruction set; other accelerators are trusted."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_bf16()
    return True


def use_bf16(wanted: bool, device: torch.device | str) -> bool:
    """``wanted`` unless ``device`` would only emulate bf16 (and ``GRAFT_EMULATED_BF16`` is not
    set): then False, with one warning per device type."""
    if not wanted or native_bf16(device) or os.environ.get(FORCE_ENV) == "1":
        return wanted
    kind = torch.device(device).type
    if kind not in _warned:
        _warned.add(kind)
        where = (
            f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
            if kind == "cpu"
            else f"this {kind} device"
        )
        logger.warning(
            "bf16 asked for, but %s has no native bf16 arithmetic (AVX512-BF16 or AMX on a CPU) and "
            "emulating it is tens of times slower: computing in fp32 instead (set %s=1 to force bf16)",
            where,
            FORCE_ENV,
        )
    return False
