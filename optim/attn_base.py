"""Shared machinery for the attention mechanisms (`attn_full`, `attn_sliding`, `attn_sparse`,
`attn_multiscale`, `attn_hybrid`) and the router that picks among them.

A mechanism is a small dataclass whose one hook, `attach(model, context_text=None, seq_len=None)`,
registers an attention function in transformers' `AttentionInterface` (plus the SDPA mask builder
in `AttentionMaskInterface`, so the model still hands us its causal + padding mask) and switches
the model to it. What differs between mechanisms is a *pattern*: an elementwise function
`pattern(b, h, q_pos, kv_pos) -> bool` over cache slots. The same function serves two backends:

* `flex`: `torch.nn.attention.flex_attention` with a `BlockMask` built from the pattern (CUDA,
  compiled), for any prefill whose model mask is causal + key padding (anything else falls back to
  the dense path). Fully masked 128x128 tiles are skipped, which is where a GPU speedup comes from, so
  patterns are block-aligned where they can be.
* `dense`: masked SDPA, evaluated per query chunk on only the key columns the chunk can see
  (a gather), so the CPU path does less work on long sparse patterns and stays exact: a masked-out
  key contributes nothing either way. Decode (one query) is the same gather.

Positions are cache slots: query i of a chunk of `Lq` against `Lk` keys sits at slot `Lk - Lq + i`,
which is the absolute token position for global (full-attention) layers of every cache in `optim`
and transformers' `DynamicCache`/`StaticCache`. Layers that the model itself runs with a sliding
window (Gemma-3's 512-token local layers, anything passing `sliding_window=`) are *not* routed:
their cache holds a rolling window, so slot != position, and they are already local. They keep
transformers' own SDPA path and mask. Routing therefore changes only the global layers (3 of 18
on Gemma-3-270M; all layers on Llama-style models).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

Pattern = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_FLEX_COMPILED = None  # torch.compile(flex_attention), built once on first CUDA use


def sdpa_forward():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def to_bool_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean keep-mask from what transformers hands an attention function (bool, or additive float)."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def explicit_mask(pattern: Pattern | None, num_heads: int, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """The full boolean (1, H|1, Lq, Lk) mask of causal AND pattern: the dense reference used by tests."""
    q = (torch.arange(q_len, device=device) + kv_len - q_len).view(1, 1, -1, 1)
    k = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    h = torch.arange(num_heads, device=device).view(1, -1, 1, 1)
    keep = k <= q
    if pattern is not None:
        keep = keep & pattern(torch.zeros((), dtype=torch.long, device=device), h, q, k)
    return keep


def pattern_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pattern: Pattern,
    scaling: float | None = None,
    dropout: float = 0.0,
    backend: str = "auto",
    chunk: int = 256,
    block_mask_cache: dict | None = None,
) -> torch.Tensor:
    """softmax(QK^T) V over (causal AND pattern AND the model's mask). Returns (B, Hq, Lq, D)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is None and q_len > 1 and kv_len > q_len:
        # Same case as transformers' SDPA: prefill into an empty StaticCache; the tail is unfilled.
        key, value, kv_len = key[:, :, :q_len], value[:, :, :q_len], q_len
    mask = to_bool_mask(attention_mask)
    use_flex = backend == "flex" or (backend == "auto" and query.is_cuda and q_len > 1)
    if use_flex:
        key_ok = None if mask is None else key_padding(mask)
        if mask is not None and key_ok is None:
            if backend == "flex":
                raise ValueError("the flex backend takes only causal + key-padding masks; use backend='dense'")
        elif dropout:
            raise ValueError("flex attention path does not support dropout")
        else:
            if key_ok is not None and bool(key_ok.all()):
                key_ok = None  # no padding: the cached block mask applies
            return _flex(query, key, value, pattern, scaling, None if key_ok is not None else block_mask_cache, key_ok)
    return _gathered_sdpa(query, key, value, mask, pattern, scaling, dropout, chunk)


def key_padding(mask: torch.Tensor) -> torch.Tensor | None:
    """(B, Lk) key padding if `mask` is exactly causal AND key padding (what transformers builds for
    global layers), else None. The last query row of such a mask sees every non-padded key."""
    if mask.shape[1] != 1:
        return None
    q_len, kv_len = mask.shape[-2:]
    key_ok = mask[:, 0, -1, :]
    rebuilt = explicit_mask(None, 1, q_len, kv_len, mask.device) & key_ok[:, None, None, :]
    return key_ok if torch.equal(rebuilt.expand_as(mask), mask) else None


def _gathered_sdpa(query, key, value, mask, pattern, scaling, dropout, chunk):
    b, hq, q_len, _ = query.shape
    kv_len = key.shape[2]
    gqa = hq != key.shape[1]
    dev = query.device
    offset = kv_len - q_len
    k_pos = torch.arange(kv_len, device=dev).view(1, 1, 1, -1)
    h_idx = torch.arange(hq, device=dev).view(1, -1, 1, 1)
    b_idx = torch.zeros((), dtype=torch.long, device=dev)
    out = query.new_zeros(b, hq, q_len, value.shape[-1])
    for s in range(0, q_len, chunk):
        e = min(s + chunk, q_len)
        q_pos = (torch.arange(s, e, device=dev) + offset).view(1, 1, -1, 1)
        keep = (k_pos <= q_pos) & pattern(b_idx, h_idx, q_pos, k_pos)
        if mask is not None:
            keep = keep & mask[:, :, s:e, :]
        cols = keep.reshape(-1, kv_len).any(0).nonzero().squeeze(1)
        if cols.numel() == 0:  # every row fully masked: SDPA gives zeros there too
            continue
        k_sub, v_sub, m_sub = key, value, keep
        if cols.numel() < kv_len:  # skip key columns no query of this chunk can see
            k_sub, v_sub = key.index_select(2, cols), value.index_select(2, cols)
            m_sub = keep.index_select(-1, cols)
        out[:, :, s:e] = F.scaled_dot_product_attention(
            query[:, :, s:e], k_sub, v_sub, attn_mask=m_sub, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )
    return out


def block_mask_for(pattern: Pattern, q_len: int, kv_len: int, num_heads: int, device, key_ok=None):
    """flex attention's BlockMask of causal AND pattern (AND key padding) for `q_len` queries at the
    end of `kv_len` cache slots. On CUDA it is built compiled (never materializing Lq x Lk); eager
    elsewhere (tests)."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = kv_len - q_len
    device = torch.device(device)

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        keep = (kv_idx <= q_pos) & pattern(b, h, q_pos, kv_idx)
        return keep if key_ok is None else keep & key_ok[b, kv_idx]

    batch = None if key_ok is None else key_ok.shape[0]
    return create_block_mask(mask_mod, batch, num_heads, q_len, kv_len, device=device, _compile=device.type == "cuda")


def _flex(query, key, value, pattern, scaling, cache, key_ok=None):
    from torch.nn.attention.flex_attention import flex_attention

    global _FLEX_COMPILED
    q_len, kv_len, hq = query.shape[2], key.shape[2], query.shape[1]
    ckey = (id(pattern), q_len, kv_len, hq, str(query.device))
    block_mask = None if cache is None else cache.get(ckey)
    if block_mask is None:
        block_mask = block_mask_for(pattern, q_len, kv_len, hq, query.device, key_ok)
        if cache is not None:
            if len(cache) > 32:
                cache.clear()
            cache[ckey] = block_mask
    fn = flex_attention
    if query.is_cuda:
        if _FLEX_COMPILED is None:
            # Every pattern and shape is a recompile; the default limit (8) would silently fall
            # back to the unfused path, which materializes Lq x Lk scores (64 GB at 32k).
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
            _FLEX_COMPILED = torch.compile(flex_attention)
        fn = _FLEX_COMPILED
    return fn(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=hq != key.shape[1])


def pattern_density(pattern: Pattern | None, num_heads: int, seq_len: int, rows: int = 64) -> float:
    """Fraction of causal (query, key) pairs the pattern keeps, estimated on `rows` evenly spaced
    query rows of a prefill of `seq_len` (exact per row; cheap even at 64k). 1.0 for full attention."""
    if pattern is None:
        return 1.0
    q = torch.linspace(0, seq_len - 1, steps=min(rows, seq_len)).round().long().view(1, 1, -1, 1)
    k = torch.arange(seq_len).view(1, 1, 1, -1)
    h = torch.arange(num_heads).view(1, -1, 1, 1)
    keep = (k <= q) & pattern(torch.zeros((), dtype=torch.long), h, q, k)
    causal = (k <= q).expand_as(keep)
    return float(keep.sum()) / float(causal.sum())


def check_window(name: str, window: int | None, minimum: int = 1) -> None:
    if window is not None and (not isinstance(window, int) or window < minimum):
        raise ValueError(f"{name}: window must be an integer >= {minimum}, got {window!r}")


def swappable(model) -> None:
    """Raise ValueError unless `model` routes attention through transformers' AttentionInterface."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or not hasattr(model.config, "_attn_implementation"):
        raise ValueError(
            f"cannot swap attention of {type(model).__name__}: not a transformers PreTrainedModel with a config"
        )
    if not type(model)._can_set_attn_implementation():
        raise ValueError(
            f"cannot swap attention of {type(model).__name__}: its attention modules do not dispatch through "
            "transformers' AttentionInterface"
        )


@dataclass
class AttentionMechanism:
    """Base of every attention mechanism. Subclasses set `name` and implement `pattern_for`.

    Harness contract: `attach(model, context_text=None, seq_len=None)` switches the model to this
    mechanism and returns None; `context_text`/`seq_len` describe the request (the router uses
    both; plain mechanisms only validate `seq_len` against their window). `detach(model)` restores
    the implementation the model had before. `backend`: "auto" (flex on CUDA without padding,
    gathered masked SDPA otherwise), "flex" or "dense" to force one.
    """

    name: ClassVar[str] = "attn_base"
    backend: str = "auto"
    chunk: int = 256  # query rows per step of the dense path: bounds its mask memory to chunk x Lk

    def __post_init__(self):
        if self.backend not in ("auto", "flex", "dense"):
            raise ValueError(f"{self.name}: backend must be auto, flex or dense, got {self.backend!r}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"{self.name}: chunk must be a positive integer, got {self.chunk!r}")
        self._block_masks: dict = {}
        self._previous: dict[int, str] = {}
        self._densities: dict[tuple, float] = {}
        self._patterns: dict[tuple, Pattern | None] = {}

    # --- what subclasses define -------------------------------------------------------------
    @property
    def window(self) -> int | None:
        """Longest contiguous local span a query always sees (None: unrestricted)."""
        return None

    def pattern_for(self, layer_idx: int | None, num_heads: int) -> Pattern | None:
        """The pattern for one global layer; None means full causal attention (plain SDPA)."""
        return None

    # --- shared behaviour ---------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("backend", "chunk")}

    @property
    def impl_name(self) -> str:
        """Registered name: the plain name for default settings, name + hash of params otherwise,
        so two differently configured instances never overwrite each other's registration."""
        if self.params == type(self)().params:
            return self.name
        return f"{self.name}_{hashlib.sha1(repr(sorted(self.params.items())).encode()).hexdigest()[:8]}"

    def cached_pattern(self, layer_idx: int | None, num_heads: int) -> Pattern | None:
        """One function object per (layer, heads): block masks are cached by pattern identity and
        compiled flex kernels are reused only for the same mask function."""
        key = (layer_idx, num_heads)
        if key not in self._patterns:
            self._patterns[key] = self.pattern_for(layer_idx, num_heads)
        return self._patterns[key]

    def density(self, seq_len: int, num_heads: int = 1, layer_idx: int | None = None) -> float:
        key = (seq_len, num_heads, layer_idx)
        if key not in self._densities:  # the router asks on every request; the answer never changes
            self._densities[key] = pattern_density(self.pattern_for(layer_idx, num_heads), num_heads, seq_len)
        return self._densities[key]

    def validate(self, model=None, seq_len: int | None = None) -> None:
        if model is not None:
            swappable(model)
            cfg = model.config.get_text_config(decoder=True)
            limit = getattr(cfg, "max_position_embeddings", None)
            if self.window is not None and limit is not None and self.window > limit:
                raise ValueError(
                    f"{self.name}: window {self.window} is larger than the model's {limit}-token context"
                )
        if seq_len is not None and self.window is not None and self.window > seq_len:
            raise ValueError(f"{self.name}: window {self.window} is larger than the sequence ({seq_len} tokens)")

    def forward(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kw):
        """The function registered in transformers' AttentionInterface."""
        if kw.get("softcap") is not None:
            raise ValueError(f"{self.name}: attention logit softcapping is not supported")
        pattern = None if sliding_window is not None else self.cached_pattern(getattr(module, "layer_idx", None), query.shape[1])
        if pattern is None:  # full attention, or a layer the model already runs with its own window
            return sdpa_forward()(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                sliding_window=sliding_window, **kw,
            )
        out = pattern_attention(
            query, key, value, attention_mask, pattern, scaling, dropout, self.backend, self.chunk, self._block_masks
        )
        return out.transpose(1, 2).contiguous(), None

    def register(self) -> str:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

        name = self.impl_name
        AttentionInterface.register(name, self.forward)
        # Without a mask builder registered under the same name, transformers hands custom
        # attention functions no mask at all (padding would be silently ignored).
        if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, sdpa_mask)
        return name

    def attach(self, model, context_text: str | None = None, seq_len: int | None = None) -> None:
        self.validate(model, seq_len)
        name = self.register()
        previous = model.config._attn_implementation
        model.set_attn_implementation(name)
        if model.config._attn_implementation != name:
            raise ValueError(f"cannot swap attention of {type(model).__name__}: it kept {previous!r}")
        self._previous.setdefault(id(model), previous if not previous.startswith("attn_") else "sdpa")

    def detach(self, model) -> None:
        model.set_attn_implementation(self._previous.pop(id(model), "sdpa"))


__all__ = [
    "AttentionMechanism",
    "Pattern",
    "block_mask_for",
    "check_window",
    "explicit_mask",
    "pattern_attention",
    "pattern_density",
    "swappable",
    "to_bool_mask",
]
