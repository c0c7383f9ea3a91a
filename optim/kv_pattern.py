"""Pattern-aware KV cache: value rows that repeat are stored once, with an index per token.

What is stored, per layer:
- keys exactly as `kv_mixed` (int4 per channel over blocks of `group_size` tokens, packed two per
  byte, fp16 scale/zero), plus its 16-bit window of recent tokens;
- values as a shared pool of unique fp8 e4m3 rows (`v_pool`: codes [N, head_dim], fp16 per-row scale,
  int64 signature), and `v_index` int32 [batch, heads, tokens] pointing every token/head at its row.

Only values are deduplicated, and only after quantization. Keys reach the cache after RoPE, so the
same token at two positions has two different rotated keys: they are not duplicates, and un-rotating
them would need each model's RoPE variant. Values carry no position, so repeated content (templated
logs, copied code, and every repeated token in the first layers, where a value depends on the token
alone) gives repeated rows. A row joins an existing pool row when its fp8 codes and scale are equal
(`tolerance=0`: lossless w.r.t. the fp8 storage), or, with `tolerance>0`, when every element is within
`tolerance * row absmax` of it (near-duplicates; candidates found by hashing a coarse grid of the row,
then verified, so a hash collision never merges unlike rows).

`dedup_stats(cache)` reports rows seen, pool rows added and the dedup ratio, per layer and in total.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .kv_mixed import MixedPrecisionKVLayer
from .kv_quant import build_checked, decode, enc_cat, enc_drop_front, encode

_HASH_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _row_hash(rows: torch.Tensor) -> torch.Tensor:
    """int64 hash per row of an integer tensor [M, W] (random odd multipliers, wrapping arithmetic)."""
    key = (rows.shape[1], rows.device)
    if key not in _HASH_WEIGHTS:
        gen = torch.Generator().manual_seed(0x5EED)
        w = torch.randint(-(2**62), 2**62, (rows.shape[1],), generator=gen, dtype=torch.int64) | 1
        _HASH_WEIGHTS[key] = w.to(rows.device)
    return (rows.to(torch.int64) * _HASH_WEIGHTS[key]).sum(-1)


class PatternAwareKVLayer(MixedPrecisionKVLayer):
    _batched = ("res_k", "res_v", "sink_k", "sink_v", "k_store", "v_index")

    def __init__(self, group_size=64, residual=0, tolerance=0.0, sliding_window=None):
        super().__init__(group_size, residual, sliding_window)
        if not 0.0 <= tolerance < 0.5:
            raise ValueError(f"kv_pattern: tolerance must be in [0, 0.5), got {tolerance}")
        self.name, self.tolerance = "kv_pattern", float(tolerance)
        self.v_pool = self.v_index = None
        self.rows_seen = self.rows_added = 0

    def _signatures(self, codes: torch.Tensor, scale: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if self.tolerance == 0:
            return _row_hash(torch.cat([codes.view(torch.uint8), scale.view(torch.int16)], dim=-1))
        amax = values.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        return _row_hash(torch.round(values / (amax * 2 * self.tolerance)).to(torch.int64))

    def _matches(self, codes, scale, pool_rows) -> torch.Tensor:
        """Does each new row equal (or lie within tolerance of) its candidate pool row?"""
        if self.tolerance == 0:
            return (codes.view(torch.uint8) == self.v_pool["codes"][pool_rows].view(torch.uint8)).all(-1) & (
                scale.view(torch.int16) == self.v_pool["scale"][pool_rows].view(torch.int16)
            ).all(-1)
        new = codes.float() * scale.float()
        old = self.v_pool["codes"][pool_rows].float() * self.v_pool["scale"][pool_rows].float()
        return ((new - old).abs() <= self.tolerance * new.abs().amax(-1, keepdim=True)).all(-1)

    def _absorb(self, k, v) -> None:
        self.k_store = enc_cat(self.k_store, encode(k, self.key_spec))
        b, h, n, d = v.shape
        enc = encode(v, ("fp8",))
        codes, scale, flat = enc["codes"].reshape(-1, d), enc["scale"].reshape(-1, 1), v.reshape(-1, d)
        sig = self._signatures(codes, scale, flat)
        index = torch.full((sig.shape[0],), -1, dtype=torch.int64, device=v.device)
        if self.v_pool is not None:  # rows already in the pool
            order = torch.argsort(self.v_pool["sig"])
            sorted_sig = self.v_pool["sig"][order]
            pos = torch.searchsorted(sorted_sig, sig).clamp_max(sorted_sig.shape[0] - 1)
            cand = order[pos]
            hit = (sorted_sig[pos] == sig) & self._matches(codes, scale, cand)
            index[hit] = cand[hit]
        while (index < 0).any():  # new rows: first occurrence of each signature joins the pool
            todo = torch.nonzero(index < 0).squeeze(1)
            _, first = torch.unique(sig[todo], return_inverse=True)
            lead = torch.full((int(first.max()) + 1,), todo.shape[0], dtype=torch.int64, device=v.device)
            lead = lead.scatter_reduce(0, first, torch.arange(todo.shape[0], device=v.device), "amin")
            rows = todo[lead]
            start = 0 if self.v_pool is None else self.v_pool["sig"].shape[0]
            self._pool_append(codes[rows], scale[rows], sig[rows])
            cand = start + first  # candidate pool row for every pending row
            ok = self._matches(codes[todo], scale[todo], cand)
            index[todo[ok]] = cand[ok]
            self.rows_added += rows.shape[0]
        self.rows_seen += sig.shape[0]
        new_index = index.to(torch.int32).reshape(b, h, n)
        self.v_index = new_index if self.v_index is None else torch.cat([self.v_index, new_index], dim=2)

    def _pool_append(self, codes, scale, sig) -> None:
        part = {"codes": codes, "scale": scale, "sig": sig}
        self.v_pool = part if self.v_pool is None else {k: torch.cat([self.v_pool[k], part[k]]) for k in part}

    def _decode_store(self, dtype):
        if self.k_store is None:
            return None
        rows = (self.v_pool["codes"].float() * self.v_pool["scale"].float()).to(dtype)
        return decode(self.k_store, self.key_spec, dtype), rows[self.v_index.long()]

    def _drop_front(self, tokens: int) -> None:
        self.k_store = enc_drop_front(self.k_store, tokens, self.key_spec)
        self.v_index = self.v_index[:, :, tokens:].contiguous()
        live = torch.unique(self.v_index)
        if self.v_pool["sig"].shape[0] > 2 * live.shape[0] + 64:  # compact rows no token points at any more
            self.v_pool = {k: t[live] for k, t in self.v_pool.items()}
            self.v_index = torch.searchsorted(live, self.v_index.long()).to(torch.int32)

    def _reset_store(self) -> None:
        self.k_store = self.v_pool = self.v_index = None
        self.rows_seen = self.rows_added = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)  # the pool is shared; stale rows go at the next compaction


@dataclass
class PatternAwareKV(KVCacheMethod):
    """kv_mixed keys; fp8 value rows deduplicated (exact after quantization, or within `tolerance`)."""

    group_size: int = 64
    residual: int = 0
    tolerance: float = 0.0

    def make_cache(self, config: PretrainedConfig) -> Cache:
        args = (self.group_size, self.residual, self.tolerance)
        return build_checked(config, "kv_pattern", self.residual, [("channel", 4, self.group_size)],
                             lambda w: PatternAwareKVLayer(*args, sliding_window=w))

    @staticmethod
    def dedup_stats(cache: Cache) -> dict:
        """Value rows seen, rows added to the pools and dedup ratio (1 - added/seen), total and per layer."""
        layers = [
            dict(layer=i, rows_seen=l.rows_seen, rows_added=l.rows_added,
                 dedup_ratio=(1 - l.rows_added / l.rows_seen) if l.rows_seen else 0.0)
            for i, l in enumerate(cache.layers) if isinstance(l, PatternAwareKVLayer)
        ]
        seen, added = sum(r["rows_seen"] for r in layers), sum(r["rows_added"] for r in layers)
        return dict(rows_seen=seen, rows_added=added, dedup_ratio=(1 - added / seen) if seen else 0.0, layers=layers)
