"""Adaptive KV cache (the report's "UltraAdvanced"): each layer picks its own storage format from
errors measured on the layer's own first prefill chunk, under a quality budget.

Candidates, cheapest first (bytes measured, not assumed — see `choices`):
- `kivi2`: 2-bit per-channel keys / per-token values (`kv_kivi` layout),
- `kivi4`: the same at 4 bits,
- `mixed`: int4 per-channel keys + fp8 values (`kv_mixed`),
- `int8`: per-token int8 keys and values (`kv_int8`),
- `fp16`: no compression (a 16-bit store), the fallback when nothing else fits the budget.
`kv_temporal` is not a candidate: its error grows with context age, which a first chunk cannot show.

How a layer decides: on its first `update` it quantizes that chunk's real (post-RoPE) keys and values
with every candidate (all tokens, no full-precision window, so the measure is the worst case) and
computes the relative error of an attention output against the exact one. Queries never reach the
cache, so the probe queries are the chunk's own last keys, each attending to strictly earlier tokens
(attending to itself would hide key errors). The layer takes the cheapest candidate whose error is
<= `max_error`, else the most accurate one, builds that layer and hands it the chunk. What is stored
afterwards is exactly what the chosen candidate stores (quantized after RoPE, as in each of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer

from .base import KVCacheMethod, build_layers, cache_nbytes
from .kv_int8 import Int8KVLayer
from .kv_kivi import KiviKVLayer
from .kv_mixed import MixedPrecisionKVLayer
from .kv_quant import SpecKVLayer, check_states, check_window, min_window

PAD_TO = 64  # largest token block among the candidates: probes are padded to whole blocks

# (residual, sliding window, head_dim) -> layer. Value groups shrink to fit small heads (gcd), as in the
# tiny test models; at head_dim >= 64 they are the stated sizes.
CANDIDATES = {
    "kivi2": lambda r, w, d: KiviKVLayer(2, 32, math.gcd(32, d), r, sliding_window=w),
    "kivi4": lambda r, w, d: KiviKVLayer(4, 64, math.gcd(64, d), r, sliding_window=w),
    "mixed": lambda r, w, d: MixedPrecisionKVLayer(64, r, sliding_window=w),
    "int8": lambda r, w, d: Int8KVLayer(sliding_window=w),
    "fp16": lambda r, w, d: SpecKVLayer(("fp8",), ("fp8",), residual=None, sliding_window=w, name="fp16"),
}


def attention_error(k, v, k_hat, v_hat, probes: int = 64) -> float:
    """Relative L2 error of softmax(q k^T) v when k, v are replaced by k_hat, v_hat (q = last keys, strictly causal)."""
    t = k.shape[2]
    if t < 2:
        num = (k_hat - k).norm() ** 2 + (v_hat - v).norm() ** 2
        return math.sqrt(num / max((k.norm() ** 2 + v.norm() ** 2).item(), 1e-30))
    p = min(probes, t - 1)
    q = k[:, :, t - p :]
    pos_q = torch.arange(t - p, t, device=k.device).unsqueeze(1)
    mask = torch.arange(t, device=k.device).unsqueeze(0) >= pos_q  # strictly causal: no key at or after the query
    scale = 1.0 / math.sqrt(k.shape[-1])

    def attend(keys, values):
        scores = (q @ keys.transpose(-1, -2)) * scale
        return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ values

    ref = attend(k, v)
    return ((attend(k_hat, v_hat) - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def measure_candidates(k: torch.Tensor, v: torch.Tensor, names, residual: int) -> dict[str, dict]:
    """Error and stored bytes per (token x head x element, K and V) of each candidate on this chunk."""
    k32, v32 = k.float(), v.float()
    t = k.shape[2]
    pad = (-t) % PAD_TO
    kp = torch.cat([k32, k32[:, :, -1:].expand(-1, -1, pad, -1)], dim=2) if pad else k32
    vp = torch.cat([v32, v32[:, :, -1:].expand(-1, -1, pad, -1)], dim=2) if pad else v32
    out = {}
    for name in names:
        probe = CANDIDATES[name](0, None, k.shape[-1])  # no window: every token quantized, the worst case
        try:
            k_hat, v_hat = probe.update(kp, vp)
        except ValueError as exc:  # a format this head_dim cannot hold (e.g. odd head_dim for packed codes)
            out[name] = dict(error=math.inf, bytes_per_element=math.inf, unsupported=str(exc))
            continue
        nbytes = cache_nbytes(Cache(layers=[probe]))
        out[name] = dict(
            error=attention_error(k32, v32, k_hat[:, :, :t].float(), v_hat[:, :, :t].float()),
            bytes_per_element=nbytes / (2 * kp.numel()),
        )
    return out


class AdaptiveKVLayer(DynamicLayer):
    """Chooses its storage on the first update, then delegates everything to the chosen layer."""

    is_croppable = False

    def __init__(self, candidates, max_error: float, residual: int, sliding_window=None):
        super().__init__()
        self.candidates, self.max_error, self.residual = tuple(candidates), float(max_error), residual
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.inner = None
        self.inner_state: dict = {}
        self.choice: dict | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        check_states(key_states, value_states, "kv_adaptive")
        measured = measure_candidates(key_states, value_states, self.candidates, self.residual)
        ok = [n for n in self.candidates if measured[n]["error"] <= self.max_error]
        pick = min(ok, key=lambda n: measured[n]["bytes_per_element"]) if ok else min(measured, key=lambda n: measured[n]["error"])
        if math.isinf(measured[pick]["error"]):
            raise ValueError(f"kv_adaptive: no candidate can store head_dim {key_states.shape[-1]}: {measured}")
        self.choice = dict(name=pick, within_budget=bool(ok), measured=measured, chunk_tokens=key_states.shape[2])
        self.inner = CANDIDATES[pick](self.residual, self.sliding_window, key_states.shape[-1])
        # `cache_nbytes` walks layer attributes; the live __dict__ of the chosen layer makes its tensors count.
        self.inner_state = vars(self.inner)
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self.inner.update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self) -> int:
        return 0 if self.inner is None else self.inner.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return (query_length, 0) if self.inner is None else self.inner.get_mask_sizes(query_length)

    def get_max_length(self) -> int:
        return -1 if self.sliding_window is None else self.sliding_window

    def payload_bits(self) -> dict:
        """The chosen format's code widths (`storage_report` reads them)."""
        return self.inner.payload_bits()

    def reset(self) -> None:  # the choice is per sequence: a reset cache measures again
        self.inner, self.inner_state, self.choice, self.is_initialized = None, {}, None, False
        self.keys = self.values = None

    def reorder_cache(self, beam_idx) -> None:
        if self.inner is not None:
            self.inner.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.inner is not None:
            self.inner.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices) -> None:
        if self.inner is not None:
            self.inner.batch_select_indices(indices)


@dataclass
class AdaptiveKV(KVCacheMethod):
    """Per layer, the cheapest of `candidates` whose measured attention-output error is <= `max_error`."""

    max_error: float = 0.2  # measured on Gemma-3-270M, 2048 tokens: +1.9% prose / +1.4% code ppl, 0.38x bytes
    candidates: tuple = ("kivi2", "kivi4", "mixed", "int8", "fp16")
    residual: int = 0

    def __post_init__(self):
        self.candidates = tuple(self.candidates)
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"kv_adaptive: unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
        if not self.max_error > 0:
            raise ValueError(f"kv_adaptive: max_error must be > 0, got {self.max_error}")

    def make_cache(self, config: PretrainedConfig) -> Cache:
        check_window(self.residual, min_window(config), "kv_adaptive")
        args = (self.candidates, self.max_error, self.residual)
        return build_layers(config, lambda: AdaptiveKVLayer(*args), lambda w: AdaptiveKVLayer(*args, sliding_window=w))

    @staticmethod
    def choices(cache: Cache) -> list[dict]:
        """Per layer: the chosen format, whether it met the budget, and every candidate's measured error/bytes."""
        return [dict(layer=i, **l.choice) for i, l in enumerate(cache.layers) if isinstance(l, AdaptiveKVLayer) and l.choice]
