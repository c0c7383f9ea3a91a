"""`attn_sparse`: block-sparse attention, local + global + strided blocks (BigBird / Sparse
Transformer family, causal).

The sequence is cut into blocks of `block` tokens. A query block sees: its `local_blocks` nearest
blocks (itself included), the first `global_blocks` blocks (a sink/summary region every query can
read), and every `stride`-th block behind it, so information from anywhere reaches any query in
at most two hops. With `block` a multiple of 128 every rule keeps or drops whole flex-attention
tiles, so the GPU skips exactly the work the pattern drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attn_base import AttentionMechanism, Pattern, check_window


def block_sparse_pattern(block: int, local_blocks: int, global_blocks: int, stride: int) -> Pattern:
    def pattern(b, h, q, k):
        qb, kb = q // block, k // block
        dist = qb - kb
        return (dist < local_blocks) | (kb < global_blocks) | (dist % stride == 0)

    return pattern


@dataclass
class BlockSparseAttention(AttentionMechanism):
    """Local + global + strided blocks of `block` tokens."""

    name: ClassVar[str] = "attn_sparse"
    block: int = 128
    local_blocks: int = 4
    global_blocks: int = 1
    stride: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_window(f"{self.name} block", self.block)
        check_window(f"{self.name} local_blocks", self.local_blocks)
        check_window(f"{self.name} stride", self.stride)
        if not isinstance(self.global_blocks, int) or self.global_blocks < 0:
            raise ValueError(f"{self.name}: global_blocks must be an integer >= 0, got {self.global_blocks!r}")

    @property
    def window(self) -> int:
        # The guaranteed contiguous span: the query's own (partial) block plus local_blocks - 1 full ones.
        return self.block * (self.local_blocks - 1) + 1

    def pattern_for(self, layer_idx, num_heads):
        return block_sparse_pattern(self.block, self.local_blocks, self.global_blocks, self.stride)
