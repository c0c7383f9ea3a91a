"""`attn_hybrid`: different mechanisms per head or per layer, and the name -> class table that
the router and configs use to build mechanisms.

Per head (DuoAttention's observation): a few "retrieval" heads need the whole context while most
heads only look locally, so the first `full_heads` fraction of query heads keep full attention and
the rest use `head_mechanism` (sliding window + sinks by default). Per layer: `layer_mechanisms`
is cycled over the model's global layers in order, e.g. ("attn_full", "attn_sparse") alternates.
Sub-mechanisms are built with their default parameters; `sub_params` overrides them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .attn_base import AttentionMechanism, Pattern
from .attn_full import FullAttention
from .attn_multiscale import MultiScaleAttention
from .attn_sliding import SlidingSinkAttention
from .attn_sparse import BlockSparseAttention

MECHANISM_CLASSES: dict[str, type[AttentionMechanism]] = {
    cls.name: cls for cls in (FullAttention, SlidingSinkAttention, BlockSparseAttention, MultiScaleAttention)
}


def make_mechanism(name: str, **params) -> AttentionMechanism:
    """Build a mechanism by its `optim` name; unknown names raise one ValueError listing the choices."""
    classes = {**MECHANISM_CLASSES, HybridAttention.name: HybridAttention}
    if name not in classes:
        raise ValueError(f"unknown attention mechanism {name!r}; choose one of {sorted(classes)}")
    return classes[name](**params)


def head_split_pattern(n_full: int, inner: Pattern) -> Pattern:
    def pattern(b, h, q, k):
        return (h < n_full) | inner(b, h, q, k)

    return pattern


@dataclass
class HybridAttention(AttentionMechanism):
    """Per-head split (default) or per-layer assignment of the other mechanisms."""

    name: ClassVar[str] = "attn_hybrid"
    full_heads: float = 0.5
    head_mechanism: str = "attn_sliding"
    layer_mechanisms: tuple[str, ...] | list[str] | None = None
    sub_params: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= float(self.full_heads) <= 1.0:
            raise ValueError(f"{self.name}: full_heads must be a fraction in [0, 1], got {self.full_heads!r}")
        names = [self.head_mechanism] + list(self.layer_mechanisms or [])
        for n in names:
            if n not in MECHANISM_CLASSES:
                raise ValueError(f"{self.name}: unknown attention mechanism {n!r}; choose one of {sorted(MECHANISM_CLASSES)}")
        if self.layer_mechanisms is not None and not self.layer_mechanisms:
            raise ValueError(f"{self.name}: layer_mechanisms must name at least one mechanism")
        self._subs = {n: MECHANISM_CLASSES[n](**dict(self.sub_params.get(n, {}))) for n in names}
        self._global_order: dict[int, int] = {}

    @property
    def window(self) -> int | None:
        windows = [m.window for m in self._subs.values() if m.window is not None]
        return max(windows) if windows else None

    def validate(self, model=None, seq_len: int | None = None) -> None:
        super().validate(model, seq_len)
        for sub in self._subs.values():
            sub.validate(None, seq_len)
        if model is not None and self.layer_mechanisms is not None:
            cfg = model.config.get_text_config(decoder=True)
            types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
            self._global_order = {i: n for n, i in enumerate(i for i, t in enumerate(types) if t == "full_attention")}
            self._patterns.clear()  # layer -> mechanism depends on this model's layout

    def pattern_for(self, layer_idx, num_heads):
        if self.layer_mechanisms is not None:
            if layer_idx is None:
                raise ValueError(f"{self.name}: per-layer mode needs attention modules with a layer_idx")
            ordinal = self._global_order.get(layer_idx, layer_idx)
            name = self.layer_mechanisms[ordinal % len(self.layer_mechanisms)]
            return self._subs[name].pattern_for(layer_idx, num_heads)
        inner = self._subs[self.head_mechanism].pattern_for(layer_idx, num_heads)
        n_full = int(round(self.full_heads * num_heads))
        if inner is None or n_full >= num_heads:
            return None
        return inner if n_full == 0 else head_split_pattern(n_full, inner)
