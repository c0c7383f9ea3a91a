"""`attn_multiscale`: dense local attention plus dilated far attention whose dilation grows with
distance (LongNet-style "multi-scale" coverage, at block granularity).

Near keys (distance < `window` tokens) are all kept. Farther keys are kept by whole blocks of
`block` tokens: in the first far band (up to 2x the local span) every 2nd key block, in the next
(up to 4x) every 4th, and so on, doubling for `levels` bands; beyond the last band every
2**levels-th block. A query therefore sees O(log n) far blocks. Dilation is on *absolute* key
block index, so all queries read the same coarse blocks (good cache reuse), and it is on blocks,
not tokens, because a token-level dilation leaves no 128x128 tile empty and flex attention could
skip nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attn_base import AttentionMechanism, Pattern, check_window


def multiscale_pattern(window: int, block: int, levels: int) -> Pattern:
    local_blocks = max(1, -(-window // block))  # far bands start after the local span, in blocks

    def pattern(b, h, q, k):
        keep = q - k < window
        dist = q // block - k // block
        kb = k // block
        for level in range(levels + 1):
            lo = local_blocks * 2**level
            dilation = 2 ** (level + 1)
            band = dist >= lo
            if level < levels:
                band = band & (dist < 2 * lo)
            keep = keep | (band & (kb % dilation == 0))
        return keep

    return pattern


@dataclass
class MultiScaleAttention(AttentionMechanism):
    """Dense local window + far blocks dilated by 2, 4, 8, ... with distance."""

    name: ClassVar[str] = "attn_multiscale"
    window_size: int = 512
    block: int = 128
    levels: int = 5

    def __post_init__(self):
        super().__post_init__()
        check_window(self.name, self.window_size)
        check_window(f"{self.name} block", self.block)
        if not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"{self.name}: levels must be an integer >= 0, got {self.levels!r}")

    @property
    def window(self) -> int:
        return self.window_size

    def pattern_for(self, layer_idx, num_heads):
        return multiscale_pattern(self.window_size, self.block, self.levels)
