"""Temporal KV cache: the older a token, the fewer bits it keeps (claim C11).

What is stored, per layer:
- `res_k`/`res_v`: the youngest tokens in 16 bits (`residual` of them plus an unfinished block);
- `tiers[i]`: blocks of `block` tokens at `schedule[i][0]` bits (8 -> 4 -> 2 by default). Keys per
  channel over the block (KIVI layout: fp16 scale/zero per block and channel, codes packed along
  head_dim), values per token in groups of `value_group` channels (fp16 scale/zero per group).

A block moves from tier i to tier i+1 once its youngest token is `schedule[i][1]` tokens old; moving
re-quantizes the block's dequantized values at the lower width (its original values are gone by then,
so errors compound a little: the 4-bit error dominates the 8-bit one it starts from).

Quantization is after RoPE (the cache receives rotated keys), so stored keys need no re-rotation and
blocks can change width without knowing their positions.

`bits_by_age(cache)` reports, per layer and tier, the age range, token count and stored bits per
element (codes + scales + zero-points), measured from the tensors actually held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .kv_quant import BlockKVLayer, build_checked, check_spec, decode, enc_cat, enc_drop_front, encode

DEFAULT_SCHEDULE = ((8, 128), (4, 2048), (2, None))  # 2-bit only past 2k tokens: it costs Gemma-3 quality


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return 0


def normalize_schedule(schedule) -> tuple[tuple[int, int | None], ...]:
    """[(bits, max_age), ...] with growing ages and a last tier without limit."""
    tiers = tuple((int(b), None if a is None else int(a)) for b, a in schedule)
    if not tiers or tiers[-1][1] is not None:
        raise ValueError(f"kv_temporal: schedule must end with an unlimited tier (max_age None), got {tiers}")
    ages = [a for _, a in tiers[:-1]]
    if any(a is None for a in ages) or ages != sorted(ages) or (ages and ages[0] <= 0):
        raise ValueError(f"kv_temporal: tier age limits must be positive and increasing, got {tiers}")
    return tiers


class TemporalKVLayer(BlockKVLayer):
    _batched = ("res_k", "res_v", "sink_k", "sink_v", "tiers")

    def __init__(self, schedule=DEFAULT_SCHEDULE, block=64, value_group=64, residual=64, sliding_window=None, sinks=0):
        super().__init__(residual=residual, block=block, sliding_window=sliding_window, name="kv_temporal", sinks=sinks)
        self.schedule = normalize_schedule(schedule)
        self.specs = [(("channel", b, block), ("token", b, value_group)) for b, _ in self.schedule]
        self.tiers: list[dict | None] = [None] * len(self.schedule)

    def _check_head_dim(self, head_dim: int) -> None:
        for kspec, vspec in self.specs:
            check_spec(kspec, head_dim, "kv_temporal keys")
            check_spec(vspec, head_dim, "kv_temporal values")

    def _tier_len(self, i: int) -> int:
        return 0 if self.tiers[i] is None else self.tiers[i]["k"]["codes"].shape[2]

    def _absorb(self, k, v) -> None:
        kspec, vspec = self.specs[0]
        self.tiers[0] = self._cat(self.tiers[0], {"k": encode(k, kspec), "v": encode(v, vspec)})
        newer = self.res_k.shape[-2]  # tokens younger than the tier being aged
        for i in range(len(self.schedule) - 1):
            n_i, limit = self._tier_len(i), self.schedule[i][1]
            # block j (from the front) has its youngest token at age newer + n_i - (j + 1) * block
            move = min(max(newer + n_i - limit, 0) // self.block, n_i // self.block) * self.block
            if move:
                tier = self.tiers[i]
                (ks, vs), (ks2, vs2) = self.specs[i], self.specs[i + 1]
                k_old = decode({n: t[:, :, : move // (1 if n == "codes" else self.block)] for n, t in tier["k"].items()}, ks, torch.float32)
                v_old = decode({n: t[:, :, :move] for n, t in tier["v"].items()}, vs, torch.float32)
                self.tiers[i] = None if move == n_i else {"k": enc_drop_front(tier["k"], move, ks), "v": enc_drop_front(tier["v"], move, vs)}
                self.tiers[i + 1] = self._cat(self.tiers[i + 1], {"k": encode(k_old, ks2), "v": encode(v_old, vs2)})
            newer += self._tier_len(i)

    @staticmethod
    def _cat(a: dict | None, b: dict) -> dict:
        return b if a is None else {"k": enc_cat(a["k"], b["k"]), "v": enc_cat(a["v"], b["v"])}

    def _decode_store(self, dtype):
        parts = [(decode(t["k"], ks, dtype), decode(t["v"], vs, dtype)) for t, (ks, vs) in zip(self.tiers, self.specs) if t is not None]
        if not parts:
            return None
        parts.reverse()  # the last tier holds the oldest tokens
        return torch.cat([p[0] for p in parts], dim=-2), torch.cat([p[1] for p in parts], dim=-2)

    def _store_len(self) -> int:
        return sum(self._tier_len(i) for i in range(len(self.tiers)))

    def _drop_front(self, tokens: int) -> None:
        for i in reversed(range(len(self.tiers))):  # oldest tokens live in the last tiers
            take = min(tokens, self._tier_len(i))
            if take:
                ks, vs = self.specs[i]
                tier = self.tiers[i]
                self.tiers[i] = None if take == self._tier_len(i) else {"k": enc_drop_front(tier["k"], take, ks), "v": enc_drop_front(tier["v"], take, vs)}
                tokens -= take

    def _reset_store(self) -> None:
        self.tiers = [None] * len(self.schedule)

    def payload_bits(self) -> dict:
        """Bits per element of each tier's codes (scales and zero-points not included)."""
        bits = [b for b, _ in self.schedule]
        return {"key": bits, "value": bits}

    def bits_by_age(self) -> list[dict]:
        """Rows youngest first: tier, nominal bits, age range [from, to), tokens, stored bits per element."""
        if not self.is_initialized:
            return []
        b, h, _, d = self.res_k.shape
        rows, age = [], 0
        groups = [("fp16", 16, {"k": self.res_k, "v": self.res_v})] + [
            (f"tier{i}", bits, t) for i, ((bits, _), t) in enumerate(zip(self.schedule, self.tiers)) if t is not None
        ] + [("sinks", 16, {"k": self.sink_k, "v": self.sink_v})]  # the oldest tokens, kept exact
        for name, bits, store in groups:
            n = store["k"].shape[2] if isinstance(store["k"], torch.Tensor) else store["k"]["codes"].shape[2]
            if n == 0:
                continue
            nbytes = _nbytes(store)
            rows.append(dict(tier=name, bits=bits, age_from=age, age_to=age + n, tokens=n, bytes=nbytes,
                             bits_per_element=8 * nbytes / (2 * b * h * n * d)))
            age += n
        return rows


@dataclass
class TemporalKV(KVCacheMethod):
    """Age tiers: `residual` youngest tokens in 16 bits, then `schedule` = [(bits, max_age), ...]."""

    schedule: tuple = field(default=DEFAULT_SCHEDULE)
    block: int = 64
    value_group: int = 64
    residual: int = 64
    sinks: int = 0  # first tokens kept in 16 bits on global layers (attention sinks)

    def __post_init__(self):
        self.schedule = normalize_schedule(self.schedule)

    def make_cache(self, config: PretrainedConfig) -> Cache:
        specs = [spec for bits, _ in self.schedule for spec in (("channel", bits, self.block), ("token", bits, self.value_group))]
        args = (self.schedule, self.block, self.value_group, self.residual)
        return build_checked(config, "kv_temporal", self.residual, specs,
                             lambda w: TemporalKVLayer(*args, sliding_window=w, sinks=self.sinks))

    @staticmethod
    def bits_by_age(cache: Cache) -> list[dict]:
        """Per layer and tier: age range, tokens and stored bits per element, from the held tensors."""
        return [dict(layer=i, **row) for i, layer in enumerate(cache.layers) if isinstance(layer, TemporalKVLayer)
                for row in layer.bits_by_age()]
