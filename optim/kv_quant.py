"""Shared pieces of the KV-compression family: codecs, input checks and a block-structured cache layer.

Codecs turn a `[batch, heads, tokens, head_dim]` float tensor into a dict of *real* compressed tensors
(packed uint8 codes, fp8 codes, fp16 scales/zero-points) and back. Dicts of tensors are what
`optim.base.cache_nbytes` walks, so every stored byte is counted.

Three layouts, named by a spec tuple so a layer can describe its storage in plain data:
- `("channel", bits, G)`: KIVI keys. Asymmetric min/max per channel over a block of G tokens; codes
  packed 8/bits per byte along head_dim; scale and zero fp16 `[B, H, tokens/G, D]`. Needs tokens % G == 0.
- `("token", bits, g)`: per-token groups of g channels; scale/zero fp16 `[B, H, tokens, D/g]`.
- `("fp8",)`: `torch.float8_e4m3fn` codes with one fp16 absmax scale per token `[B, H, tokens, 1]`.

All three append and drop along the token axis (dim 2) block by block, so a cache can keep them as
one growing tensor per field instead of a Python list of small tensors.
"""

from __future__ import annotations

import os

import torch
from transformers.cache_utils import DynamicLayer

from .base import BatchedStateMixin, WindowedLengthMixin

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP16_MAX = torch.finfo(torch.float16).max
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


# Value checks (NaN/Inf, fp16 range) read a device value back on the host: they run once per
# prefill chunk of more than one token, not on every decode step, where the sync would stall the
# GPU and break CUDA-graph capture. OLLM_KV_CHECK_EVERY_STEP=1 checks one-token updates too (debug).
CHECK_EVERY_STEP = os.environ.get("OLLM_KV_CHECK_EVERY_STEP", "") == "1"


def checks_values(states: torch.Tensor) -> bool:
    """Whether an update of these [batch, heads, tokens, head_dim] states gets the value checks."""
    return states.shape[-2] > 1 or CHECK_EVERY_STEP


def check_states(key_states: torch.Tensor, value_states: torch.Tensor, what: str) -> None:
    """Refuse inputs that would turn into silent garbage once quantized: dtype and shape always,
    values (NaN/Inf, fp16 range) per prefill chunk (see CHECK_EVERY_STEP)."""
    for name, t in (("keys", key_states), ("values", value_states)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{what}: unsupported {name} dtype {t.dtype}; expected float32, float16 or bfloat16")
        if t.dim() != 4:
            raise ValueError(f"{what}: {name} must be [batch, heads, tokens, head_dim], got shape {tuple(t.shape)}")
        if not checks_values(t):
            continue
        if not torch.isfinite(t).all():
            raise ValueError(f"{what}: NaN or Inf in the {name}; refusing to quantize them")
        if t.numel() and t.abs().amax() > FP16_MAX:
            raise ValueError(f"{what}: {name} exceed the fp16 range of the stored scales/window ({FP16_MAX})")


def check_spec(spec: tuple, head_dim: int, what: str) -> None:
    kind = spec[0]
    if kind == "fp8":
        return
    if kind not in ("channel", "token"):
        raise ValueError(f"{what}: unknown storage layout {kind!r}")
    bits, group = int(spec[1]), int(spec[2])
    if bits not in (2, 4, 8):
        raise ValueError(f"{what}: {bits}-bit codes are not supported (2, 4 or 8)")
    if group <= 0:
        raise ValueError(f"{what}: group size must be positive, got {group}")
    if head_dim % (8 // bits):
        raise ValueError(f"{what}: head_dim {head_dim} cannot pack {8 // bits} {bits}-bit codes per byte")
    if kind == "token" and head_dim % group:
        raise ValueError(f"{what}: head_dim {head_dim} is not divisible by the value group size {group}")


def spec_bits(spec: tuple) -> int:
    return 8 if spec[0] == "fp8" else int(spec[1])


def tokens_per_row(spec: tuple) -> int:
    """How many tokens share one row of scales: the whole block for per-channel keys, else one."""
    return int(spec[2]) if spec[0] == "channel" else 1


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits along the last dim -> 8/bits codes per byte (lowest bits first)."""
    if bits == 8:
        return codes
    per = 8 // bits
    grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per).to(torch.int32)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (grouped << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def div_exact(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """x / divisor rounded to nearest on every device. PyTorch's CUDA kernels multiply by the
    reciprocal of a Python-number divisor (up to 1 ulp off, so an fp16 scale next to a rounding
    boundary flips, as the H200 showed); a tensor divisor is divided. The CPU divides either way."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def _minmax_quantize(x: torch.Tensor, bits: int, dim: int) -> dict:
    """Asymmetric uniform quantization reducing over `dim`. fp16 zero is rounded down and the fp16
    scale up, so every value stays inside the code range after the fp16 rounding of the parameters."""
    levels = (1 << bits) - 1
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    zero = lo.to(torch.float16)
    zero = torch.where(zero.float() > lo, (lo - lo.abs() * 2.0**-10).to(torch.float16), zero)
    scale = div_exact(hi - zero.float(), levels).clamp_min(1e-7)
    scale = (scale * (1 + 2.0**-10)).to(torch.float16)
    codes = torch.round((x - zero.float()) / scale.float()).clamp_(0, levels).to(torch.uint8)
    return {"codes": pack(codes, bits), "scale": scale, "zero": zero}


def encode(x: torch.Tensor, spec: tuple) -> dict:
    """Compress float `x` [B, H, T, D] in the layout `spec` (see module docstring)."""
    x = x.float()
    b, h, t, d = x.shape
    if spec[0] == "fp8":
        scale = div_exact(x.abs().amax(-1, keepdim=True), FP8_MAX).clamp_min(1e-7)
        scale = (scale * (1 + 2.0**-10)).to(torch.float16)
        codes = (x / scale.float()).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
        return {"codes": codes, "scale": scale}
    bits, group = int(spec[1]), int(spec[2])
    if spec[0] == "channel":
        if t % group:
            raise ValueError(f"per-channel key blocks need a multiple of {group} tokens, got {t}")
        enc = _minmax_quantize(x.reshape(b, h, t // group, group, d), bits, dim=3)
        enc["codes"] = enc["codes"].reshape(b, h, t, -1)
        enc["scale"], enc["zero"] = enc["scale"].squeeze(3), enc["zero"].squeeze(3)
        return enc
    enc = _minmax_quantize(x.reshape(b, h, t, d // group, group), bits, dim=4)
    enc["codes"] = enc["codes"].reshape(b, h, t, -1)
    enc["scale"], enc["zero"] = enc["scale"].squeeze(4), enc["zero"].squeeze(4)
    return enc


def decode(enc: dict, spec: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Back to `dtype` [B, H, T, D]."""
    if spec[0] == "fp8":
        return (enc["codes"].float() * enc["scale"].float()).to(dtype)
    bits, group = int(spec[1]), int(spec[2])
    codes = unpack(enc["codes"], bits).float()
    b, h, t, d = codes.shape
    scale, zero = enc["scale"].float(), enc["zero"].float()
    if spec[0] == "channel":
        shaped = codes.reshape(b, h, t // group, group, d) * scale.unsqueeze(3) + zero.unsqueeze(3)
    else:
        shaped = codes.reshape(b, h, t, d // group, group) * scale.unsqueeze(4) + zero.unsqueeze(4)
    return shaped.reshape(b, h, t, d).to(dtype)


def enc_cat(a: dict | None, b: dict) -> dict:
    return b if a is None else {name: torch.cat([a[name], b[name]], dim=2) for name in b}


def enc_drop_front(enc: dict, tokens: int, spec: tuple) -> dict:
    """Drop the oldest `tokens` (a multiple of the rows' token span); contiguous so no old buffer stays alive."""
    rows = tokens // tokens_per_row(spec)
    return {name: t[:, :, (tokens if name == "codes" else rows) :].contiguous() for name, t in enc.items()}


def enc_len(enc: dict | None) -> int:
    return 0 if enc is None else enc["codes"].shape[2]


def min_window(config) -> int | None:
    """The shortest sliding window among the model's layers (None if all are global)."""
    from .base import layer_specs

    windows = [s.sliding_window for s in layer_specs(config) if s.sliding_window is not None]
    return min(windows) if windows else None


def check_window(residual: int | None, sliding_window: int | None, what: str) -> None:
    if residual is not None and residual < 0:
        raise ValueError(f"{what}: the full-precision window must be >= 0 tokens, got {residual}")
    if residual is not None and sliding_window is not None and residual >= sliding_window - 1:
        raise ValueError(
            f"{what}: full-precision window of {residual} tokens is not shorter than the sliding window "
            f"({sliding_window}, keeping {sliding_window - 1}); those layers would never be compressed"
        )


def build_checked(config, name: str, residual, specs, factory):
    """Validate formats and window against the model, then one layer per decoder layer via
    `factory(sliding_window_or_None)`: bad settings fail at cache creation, not mid-forward."""
    from .base import build_layers, kv_geometry

    _, head_dim = kv_geometry(config)
    for spec in specs:
        check_spec(spec, head_dim, name)
    check_window(residual, min_window(config), name)
    return build_layers(config, lambda: factory(None), factory)


class BlockKVLayer(WindowedLengthMixin, BatchedStateMixin, DynamicLayer):
    """A cache layer with a 16-bit window of recent tokens in front of a compressed store.

    New tokens enter the window; whenever it holds `residual + block` tokens or more, its oldest whole
    blocks of `block` tokens move into the compressed store (subclass hooks `_absorb`, `_decode_store`,
    `_drop_front`, `_store_len`). `residual=None` never compresses (a plain 16-bit cache).

    `sinks`: the first tokens of the sequence stay in 16 bits for good on a global layer (attention
    sinks, StreamingLLM: most heads park attention there, so their error weighs on every query). A
    sliding layer's window moves past them, so it keeps none.

    The window is kept in 16 bits (the model dtype if that is fp16/bf16, else fp16), because byte ratios
    are taken against a 16-bit cache: an fp32 window would be charged twice for no accuracy a 16-bit
    baseline has. Sliding layers keep `sliding_window - 1` tokens as transformers does; the store drops
    only whole blocks, so it may hold up to `block - 1` extra old tokens (counted, never attended).
    """

    is_croppable = False
    _batched: tuple[str, ...] = ("res_k", "res_v", "sink_k", "sink_v")  # tensors with batch as dim 0

    def __init__(self, *, residual: int | None, block: int, sliding_window: int | None = None, name: str = "kv",
                 sinks: int = 0):
        super().__init__()
        check_window(residual, sliding_window, name)
        if block <= 0:
            raise ValueError(f"{name}: block/group size must be positive, got {block}")
        if sinks < 0:
            raise ValueError(f"{name}: sinks must be >= 0, got {sinks}")
        self.residual, self.block, self.name = residual, int(block), name
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.sinks = 0 if self.is_sliding else int(sinks)
        self.cumulative_length = 0
        self.res_k = self.res_v = self.sink_k = self.sink_v = None

    # hooks -----------------------------------------------------------------------------------
    def _absorb(self, k: torch.Tensor, v: torch.Tensor) -> None:
        raise NotImplementedError

    def _decode_store(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def _store_len(self) -> int:
        return 0

    def _drop_front(self, tokens: int) -> None:
        raise NotImplementedError

    def _reset_store(self) -> None:
        pass

    def _check_head_dim(self, head_dim: int) -> None:
        pass

    # DynamicLayer API ------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self._check_head_dim(key_states.shape[-1])
        store = key_states.dtype if key_states.dtype in (torch.float16, torch.bfloat16) else torch.float16
        b, h, _, d = key_states.shape
        self.res_k = torch.empty(b, h, 0, d, dtype=store, device=self.device)
        self.res_v = torch.empty(b, h, 0, value_states.shape[-1], dtype=store, device=self.device)
        self.sink_k, self.sink_v = self.res_k[:, :, :0].clone(), self.res_v[:, :, :0].clone()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        check_states(key_states, value_states, self.name)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        old = self.cumulative_length if self.sliding_window is None else min(self.cumulative_length, self.sliding_window - 1)
        self.cumulative_length += q
        take = min(self.sinks - self.sink_k.shape[-2], q)
        if take > 0:  # the sequence's first tokens: sinks, kept in 16 bits and never compressed
            self.sink_k = torch.cat([self.sink_k, key_states[:, :, :take].to(self.sink_k.dtype)], dim=-2)
            self.sink_v = torch.cat([self.sink_v, value_states[:, :, :take].to(self.sink_v.dtype)], dim=-2)
            key_states, value_states = key_states[:, :, take:], value_states[:, :, take:]
        res_k = torch.cat([self.res_k, key_states.to(self.res_k.dtype)], dim=-2)
        res_v = torch.cat([self.res_v, value_states.to(self.res_v.dtype)], dim=-2)
        flush = 0 if self.residual is None else max(res_k.shape[-2] - self.residual, 0) // self.block * self.block
        self.res_k, self.res_v = res_k[:, :, flush:].contiguous(), res_v[:, :, flush:].contiguous()
        if flush:  # after the window is cut, so `_absorb` sees the ages the store will have
            self._absorb(res_k[:, :, :flush].float(), res_v[:, :, :flush].float())
        res_k, res_v = self.res_k, self.res_v
        stored = self._decode_store(key_states.dtype)
        keys, values = res_k.to(key_states.dtype), res_v.to(value_states.dtype)
        if stored is not None:
            keys, values = torch.cat([stored[0], keys], dim=-2), torch.cat([stored[1], values], dim=-2)
        if self.sinks:
            keys = torch.cat([self.sink_k.to(keys.dtype), keys], dim=-2)
            values = torch.cat([self.sink_v.to(values.dtype), values], dim=-2)
        keys, values = keys[:, :, keys.shape[-2] - (old + q) :], values[:, :, values.shape[-2] - (old + q) :]
        if self.sliding_window is not None:
            self._evict()
        return keys, values

    def _evict(self) -> None:
        keep = self.sliding_window - 1
        excess = self._store_len() + self.res_k.shape[-2] - keep
        drop = min(max(excess, 0), self._store_len()) // self.block * self.block
        if drop:
            self._drop_front(drop)
        if self._store_len() == 0 and self.res_k.shape[-2] > keep:  # plain 16-bit mode (residual=None)
            self.res_k, self.res_v = self.res_k[:, :, -keep:].contiguous(), self.res_v[:, :, -keep:].contiguous()

    def stored_tokens(self) -> int:
        return self._store_len() + (0 if self.res_k is None else self.res_k.shape[-2] + self.sink_k.shape[-2])

    def reset(self) -> None:
        self.res_k = self.res_v = self.sink_k = self.sink_v = self.keys = self.values = None
        self._reset_store()
        self.cumulative_length = 0
        self.is_initialized = False


class SpecKVLayer(BlockKVLayer):
    """One compressed store: keys in `key_spec`, values in `value_spec` (KIVI, mixed int4/fp8, ...)."""

    _batched = ("res_k", "res_v", "sink_k", "sink_v", "k_store", "v_store")

    def __init__(self, key_spec: tuple, value_spec: tuple, *, residual: int | None, sliding_window=None, name="kv",
                 sinks: int = 0):
        block = tokens_per_row(key_spec) if key_spec[0] == "channel" else 1
        super().__init__(residual=residual, block=block, sliding_window=sliding_window, name=name, sinks=sinks)
        self.key_spec, self.value_spec = tuple(key_spec), tuple(value_spec)
        self.k_store = self.v_store = None

    def _check_head_dim(self, head_dim: int) -> None:
        check_spec(self.key_spec, head_dim, f"{self.name} keys")
        check_spec(self.value_spec, head_dim, f"{self.name} values")

    def _absorb(self, k, v) -> None:
        self.k_store = enc_cat(self.k_store, encode(k, self.key_spec))
        self.v_store = enc_cat(self.v_store, encode(v, self.value_spec))

    def _decode_store(self, dtype):
        if self.k_store is None:
            return None
        return decode(self.k_store, self.key_spec, dtype), decode(self.v_store, self.value_spec, dtype)

    def _store_len(self) -> int:
        return enc_len(self.k_store)

    def _drop_front(self, tokens: int) -> None:
        self.k_store = enc_drop_front(self.k_store, tokens, self.key_spec)
        self.v_store = enc_drop_front(self.v_store, tokens, self.value_spec)

    def _reset_store(self) -> None:
        self.k_store = self.v_store = None

    def payload_bits(self) -> dict:
        """Bits per element of the key and value codes (scales and zero-points not included); a layer
        that never compresses (`residual=None`) holds only its 16-bit window."""
        if self.residual is None:
            return {"key": 16, "value": 16}
        return {"key": spec_bits(self.key_spec), "value": spec_bits(self.value_spec)}
