"""`attn_sliding`: sliding window + attention sinks, the StreamingLLM pattern (Xiao et al. 2023).

A query at position q sees the keys in (q - window, q] plus the first `sinks` tokens of the
sequence. The sinks matter: softmax needs somewhere to put mass that no local token deserves, and
pretrained models dump it on the first tokens; dropping them (a plain window) degrades quality far
more than the window size alone suggests. `window=1, sinks=0` attends only to the token itself:
a deliberately broken mechanism the quality-gate tests use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attn_base import AttentionMechanism, Pattern, check_window


def sliding_sink_pattern(window: int, sinks: int) -> Pattern:
    def pattern(b, h, q, k):
        return (q - k < window) | (k < sinks)

    return pattern


@dataclass
class SlidingSinkAttention(AttentionMechanism):
    """Local window of `window` tokens (including the query itself) plus `sinks` first tokens."""

    name: ClassVar[str] = "attn_sliding"
    window_size: int = 512
    sinks: int = 4

    def __post_init__(self):
        super().__post_init__()
        check_window(self.name, self.window_size)
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"{self.name}: sinks must be an integer >= 0, got {self.sinks!r}")

    @property
    def window(self) -> int:
        return self.window_size

    def pattern_for(self, layer_idx, num_heads):
        return sliding_sink_pattern(self.window_size, self.sinks)
