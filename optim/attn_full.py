"""`attn_full`: full causal attention through PyTorch SDPA, the reference every mechanism is
compared against. It is transformers' own `sdpa` function registered under our name, so the
harness attaches every attention method the same way and the baseline pays the same dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attn_base import AttentionMechanism


@dataclass
class FullAttention(AttentionMechanism):
    """Dense causal attention on every layer (pattern None -> transformers' SDPA forward)."""

    name: ClassVar[str] = "attn_full"
