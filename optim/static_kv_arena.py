"""A static KV arena: every layer's keys and values pre-allocated once, in one buffer, for the
maximum length — so a decode step allocates nothing and can be captured in a CUDA graph.

Layout. Global layers hold `max_cache_len` slots, slot = position. Sliding layers hold a ring of
`min(window, max_cache_len)` slots, slot = position % window: a decode step at position q writes
slot q % window, which evicts exactly position q - window, the one token the window just dropped
(transformers' sliding mask lets q see keys in (q - window, q]). All slots of all layers are views
into one flat allocation, so the arena costs one allocator call for its whole lifetime.

Two ways to drive it:

* As a plain transformers `Cache` (`model(ids, cache=arena)`): writes go into the arena in place,
  and `update` returns what `DynamicCache` / `DynamicSlidingWindowLayer` would return (keys in
  position order, the sliding ones with the last window - 1 past tokens), so transformers' own
  masks apply and logits match the dynamic cache. Reading a wrapped ring in position order needs a
  gather, so this path is for prefill and for correctness, not for speed.
* In static mode (`GraphedDecoder`): one token per step, the position lives in a device tensor,
  `update` writes slot position % capacity with `index_copy_` and returns the whole buffers, and
  the masks are built from the same device tensor (slot s is visible iff s <= position, which is
  right for the ring too). No host value changes between steps, so the step is graph-capturable.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin

from .base import KVCacheMethod, kv_geometry, layer_specs, text_config


class ArenaFullError(ValueError):
    """More tokens were asked of the arena than it was sized for."""


def write_positions(keys, values, n: int, key_states, value_states, sliding_window: int | None):
    """Write tokens at positions [n, n + new) into `keys`/`values` [B, H, capacity, D] (slot = position,
    or position % capacity on a sliding ring) and return what transformers' dynamic layers would:
    all keys in position order, or on a sliding layer the last window - 1 past ones + the new ones."""
    new, capacity = key_states.shape[-2], keys.shape[2]
    if sliding_window is None or n + new <= capacity:  # no wrap: slot = position
        keys[:, :, n : n + new].copy_(key_states)
        values[:, :, n : n + new].copy_(value_states)
        start = 0 if sliding_window is None else n - min(n, sliding_window - 1)
        return keys[:, :, start : n + new], values[:, :, start : n + new]
    # Wrapped ring: return (last window-1 past tokens in position order, new tokens), then keep
    # the newest `capacity` tokens. Reading before writing matters when `new` > 1.
    keep = min(n, sliding_window - 1)
    past = torch.arange(n - keep, n, device=keys.device) % capacity
    full_k = torch.cat([keys.index_select(2, past), key_states], dim=-2)
    full_v = torch.cat([values.index_select(2, past), value_states], dim=-2)
    tail = min(new, capacity)
    slots = torch.arange(n + new - tail, n + new, device=keys.device) % capacity
    keys.index_copy_(2, slots, key_states[:, :, new - tail :])
    values.index_copy_(2, slots, value_states[:, :, new - tail :])
    return full_k, full_v


class ArenaLayer(CacheLayerMixin):
    """One layer's slice of the arena; global (slot = position) or a sliding ring."""

    is_compileable = False  # keep generate() from compiling around it; graphs come from GraphedDecoder

    def __init__(self, arena: "StaticKVArena", capacity: int, sliding_window: int | None):
        super().__init__()
        self.arena = arena
        self.capacity = capacity
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.length = 0  # tokens seen (host side; GraphedDecoder advances it after each replay)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.arena.allocate(key_states.shape[0], key_states.dtype, key_states.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[:2] != self.keys.shape[:2] or key_states.shape[-1] != self.keys.shape[-1]:
            raise ValueError(
                f"key states {tuple(key_states.shape)} do not fit the arena's (batch, kv heads, head_dim) = "
                f"{tuple(self.keys.shape[:2]) + (self.keys.shape[-1],)}"
            )
        if self.arena.static_mode:
            slot = torch.remainder(self.arena.position, self.capacity)
            self.keys.index_copy_(2, slot, key_states)
            self.values.index_copy_(2, slot, value_states)
            return self.keys, self.values
        n = self.length
        self.arena.check_room(key_states.shape[-2], n)
        self.length = n + key_states.shape[-2]
        return write_positions(self.keys, self.values, n, key_states, value_states, self.sliding_window)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        n = self.length
        if self.sliding_window is None:
            return n + query_length, 0
        return min(n, self.sliding_window - 1) + query_length, max(n - self.sliding_window + 1, 0)

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        self.length = 0  # the buffers stay: stale slots are masked until overwritten

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:  # in place: the buffers' addresses are what a captured graph reads
            self.keys.copy_(self.keys.index_select(0, beam_idx.to(self.keys.device)))
            self.values.copy_(self.values.index_select(0, beam_idx.to(self.values.device)))

    def offload(self):
        raise NotImplementedError("a static KV arena stays on its device (offloading would move its buffers)")


class StaticKVArena(Cache):
    """A transformers `Cache` whose K/V live in one pre-allocated buffer sized for `max_cache_len`.

    Allocation happens in `allocate` — eagerly if batch_size, dtype and device are given, else at
    the first update (the prefill). Nothing is allocated for K/V after that.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        max_cache_len: int,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ):
        if max_cache_len <= 0:
            raise ValueError(f"max_cache_len must be positive, got {max_cache_len}")
        self._max_len = max_cache_len
        self.kv_heads, self.head_dim = kv_geometry(config)
        self.specs = layer_specs(config)
        layers = [
            ArenaLayer(self, max_cache_len if s.sliding_window is None else min(s.sliding_window, max_cache_len),
                       s.sliding_window)
            for s in self.specs
        ]
        super().__init__(layers=layers)
        self.static_mode = False
        self.buffer: torch.Tensor | None = None
        self.position: torch.Tensor | None = None  # static mode: the position being decoded, [1] long
        self._slots: dict[int, torch.Tensor] = {}
        if batch_size is not None and dtype is not None and device is not None:
            self.allocate(batch_size, dtype, torch.device(device))

    def allocate(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
        if self.buffer is not None:
            return
        per_slot = batch_size * self.kv_heads * self.head_dim
        total = sum(2 * layer.capacity * per_slot for layer in self.layers)
        self.buffer = torch.zeros(total, dtype=dtype, device=device)
        offset = 0
        for layer in self.layers:
            shape = (batch_size, self.kv_heads, layer.capacity, self.head_dim)
            size = layer.capacity * per_slot
            layer.keys = self.buffer[offset : offset + size].view(shape)
            layer.values = self.buffer[offset + size : offset + 2 * size].view(shape)
            layer.device, layer.dtype, layer.is_initialized = device, dtype, True
            offset += 2 * size
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self._slots = {c: torch.arange(c, device=device) for c in {layer.capacity for layer in self.layers}}

    @property
    def max_cache_len(self) -> int:  # a property on transformers 5.17's Cache, so not a plain attribute
        return self._max_len

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length

    def check_room(self, new_tokens: int, seen: int | None = None) -> None:
        seen = self.get_seq_length() if seen is None else seen
        if seen + new_tokens > self.max_cache_len:
            raise ArenaFullError(
                f"the KV arena holds {self.max_cache_len} tokens; {seen} are stored and {new_tokens} more were "
                f"asked for. Build it with a larger max_cache_len."
            )

    def advance(self, tokens: int = 1) -> None:
        """Host-side bookkeeping after a static-mode step (a graph replay cannot update Python ints)."""
        for layer in self.layers:
            layer.length += tokens

    def decode_masks(self, model_config: PretrainedConfig, dtype: torch.dtype):
        """Attention masks for one static-mode token at `self.position`, built on the device.

        Returns one 4D mask for models with a single attention type and a dict keyed by layer type
        for hybrid ones (Gemma-3 takes the dict as-is). Bool for sdpa; additive for eager.
        """
        impl = getattr(model_config, "_attn_implementation", None) or "sdpa"
        if "flash" in impl:
            raise ValueError(f"attention implementation {impl!r} takes no 4D mask; use sdpa or eager")
        masks = {}
        for layer in self.layers:
            kind = "sliding_attention" if layer.is_sliding else "full_attention"
            if kind not in masks:
                visible = (self._slots[layer.capacity] <= self.position).view(1, 1, 1, layer.capacity)
                if impl == "eager":
                    zero = torch.zeros((), dtype=dtype, device=visible.device)
                    visible = torch.where(visible, zero, torch.finfo(dtype).min)
                masks[kind] = visible
        return masks if len(masks) > 1 else next(iter(masks.values()))


def cache_kwarg(model: torch.nn.Module) -> str:
    """`cache` (transformers >= 5.2x) or `past_key_values` (older 5.x), read off the forward signature."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class GraphedDecoder:
    """Greedy-decode driver over a `StaticKVArena`: eager prefill, then one-token steps that are
    captured once in a `torch.cuda.CUDAGraph` and replayed (CUDA), or run eagerly (CPU, or
    use_graph=False). Every step writes into the same static input/output tensors.

    `step()` returns the logits tensor the graph writes into: it is overwritten by the next step,
    so clone it to keep it.
    """

    def __init__(self, model: torch.nn.Module, arena: StaticKVArena, use_graph: bool | None = None):
        self.model, self.arena = model, arena
        self.kwarg = cache_kwarg(model)
        self.use_graph = (arena.buffer is not None and arena.buffer.is_cuda) if use_graph is None else use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_ids: torch.Tensor | None = None
        self.static_logits: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """Eager prefill through the arena; kwargs go to the model (e.g. logits_to_keep=1)."""
        self.arena.check_room(input_ids.shape[1])
        out = self.model(input_ids=input_ids, use_cache=True, **{self.kwarg: self.arena}, **kwargs)
        return out.logits

    def _forward_static(self) -> torch.Tensor:
        arena = self.arena
        masks = arena.decode_masks(self.model.config, self.model.dtype)
        arena.static_mode = True
        try:
            out = self.model(
                input_ids=self.static_ids,
                position_ids=arena.position.view(1, 1),
                attention_mask=masks,
                use_cache=True,
                **{self.kwarg: arena},
            )
        finally:
            arena.static_mode = False
        return out.logits

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decode one token per sequence (`input_ids` [batch, 1]); returns logits [batch, 1, vocab]."""
        arena = self.arena
        if arena.buffer is None:
            raise RuntimeError("prefill (or StaticKVArena(..., batch_size, dtype, device)) before step()")
        if input_ids.shape != (arena.layers[0].keys.shape[0], 1):
            raise ValueError(f"step() takes input_ids of shape (batch, 1) = "
                             f"({arena.layers[0].keys.shape[0]}, 1), got {tuple(input_ids.shape)}")
        arena.check_room(1)
        if self.static_ids is None:
            self.static_ids = input_ids.clone()
        self.static_ids.copy_(input_ids)
        arena.position.fill_(arena.get_seq_length())
        if not self.use_graph:
            self.static_logits = self._forward_static()
        elif self.graph is None:
            self._capture()
        else:
            self.graph.replay()
        arena.advance(1)
        return self.static_logits

    def _capture(self) -> None:
        # Warm-up on a side stream (cuBLAS/cuDNN workspaces get allocated outside the graph). It
        # computes the current step for real; the replay below rewrites the same KV slot with the
        # same values, so the warm-up leaves no trace in the cache.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward_static()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self._forward_static()
        self.graph.replay()


@dataclass
class StaticArenaKV(KVCacheMethod):
    """KV method entry: a `StaticKVArena` sized for `max_cache_len` tokens, allocated at prefill, or
    for the model's context where that is shorter (SmolLM2's 8192: slots past it could never be used)."""

    max_cache_len: int = 4096

    def make_cache(self, config: PretrainedConfig) -> Cache:
        context = getattr(text_config(config), "max_position_embeddings", None)
        return StaticKVArena(config, min(self.max_cache_len, context or self.max_cache_len))
