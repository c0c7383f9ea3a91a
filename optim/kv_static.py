"""A static (preallocated) KV store that the fused Triton decode kernels read in place.

One `StaticStoreLayer` per decoder layer holds its K/V in a storage format (`StoreFormat`: plain
16-bit, int8, kv_mixed's int4/fp8, KIVI's 2-bit) in tensors sized for a capacity of tokens, plus
per-sequence lengths on the device. Sliding-window layers (Gemma-3) are 16-bit rings of
`window` slots, whatever the method: they stay small, and a ring is graph-capturable.

How tokens get in:
- prefill chunks (more than one token): eagerly, through `optim.kv_quant.encode` /
  `quantize_int8_per_token`, so codes equal the torch path's bit for bit. `update` returns the
  dequantized K/V transformers' SDPA needs for the chunk, as the torch-path layers do;
- decode steps (one token): a small Triton kernel per format quantizes on write at the position it
  reads from the device length and advances that length; the per-channel key block a token
  completes is quantized in the same launch. No host sync, no allocation, no torch.cat: a decode
  step is CUDA-graph capturable. `update` then returns a `FusedKV` handle, which the
  `ollm_fused` attention function (optim.fused_attention) turns into one split-K kernel launch.

Sinks (per-channel formats with `fmt.sinks`): the sequence's first tokens go to a 16-bit sink
buffer and never into the store; the tokens after them (the *stream*) fill the store and window as
they would without sinks, so `capacity` counts stream tokens and a decode step's attention gets one
more partial, over the sinks.

Capacity is allocated in big blocks outside the step: `reserve(total_tokens)` (the harness calls
it before capturing a graph), or automatically, `capacity_step` tokens at a time, in eager
updates. A step that would overflow while a graph is being captured is a ValueError.

Bytes: `optim.base.cache_nbytes` counts every allocated tensor, filled or not (held memory);
`filled_nbytes()` counts the filled part only, `bytes_per_step()` what one decode step reads.
The kernels' partial-result scratch (`Workspace`) is not KV storage and is not counted.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin

from .base import kv_geometry, layer_specs
from .kv_int8 import dequantize_int8, quantize_int8_per_token
from .kv_quant import check_states, decode, encode
from .kv_store_format import INT8, PLAIN, StoreFormat, kivi_format, mixed_format
from .static_kv_arena import write_positions

FP8 = torch.float8_e4m3fn
__all__ = ["INT8", "PLAIN", "FusedKV", "StaticStoreCache", "StaticStoreLayer", "StoreFormat", "kivi_format",
           "mixed_format", "reference_attention"]


class FusedKV:
    """What `update` returns for a one-token step on the fused path, as both "keys" and "values":
    transformers passes it unchanged to the attention function, which calls `attend`."""

    __slots__ = ("layer",)

    def __init__(self, layer: "StaticStoreLayer"):
        self.layer = layer

    def attend(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        return self.layer.attend(query, scaling)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class StaticStoreLayer(CacheLayerMixin):
    """One layer's static store; global (slot = position) or a 16-bit sliding ring. `fused=False`
    sends one-token updates down the eager path too (no Triton; comparisons and debugging)."""

    is_compileable = False  # graphs come from optim.graph_decode, not from torch.compile
    is_croppable = False

    def __init__(self, fmt: StoreFormat, sliding_window: int | None = None, capacity_step: int = 1024,
                 workspace=None, fused: bool = True, split_tokens: int | None = None):
        super().__init__()
        self.fmt = PLAIN if sliding_window is not None else fmt
        self.sliding_window, self.is_sliding = sliding_window, sliding_window is not None
        self.ring = sliding_window is not None
        self.capacity_step, self.split_tokens, self.fused = capacity_step, split_tokens, fused
        self.workspace = workspace
        self.capacity = self.reserved = 0
        self.batch = self.heads = self.head_dim = 0
        self.store_dtype = self.lengths = None
        self.host_lengths: list[int] = []
        self._plan = None
        for name in self._shapes(0):
            setattr(self, name, None)

    # storage ---------------------------------------------------------------------------------
    def _shapes(self, capacity: int) -> dict[str, tuple[tuple, torch.dtype]]:
        """Every storage tensor: name -> (shape, dtype). Token axis is dim 2 (blocks for k_scale/k_zero)."""
        f, b, h, d, s16 = self.fmt, self.batch, self.heads, self.head_dim, self.store_dtype
        if f.name == "plain":
            return {"keys": ((b, h, capacity, d), s16), "values": ((b, h, capacity, d), s16)}
        if f.name == "int8":
            return {"k_codes": ((b, h, capacity, d), torch.int8), "k_scale": ((b, h, capacity), torch.float16),
                    "v_codes": ((b, h, capacity, d), torch.int8), "v_scale": ((b, h, capacity), torch.float16)}
        shapes = {"k_codes": ((b, h, capacity, d * f.key_bits // 8), torch.uint8),
                  "k_scale": ((b, h, capacity // f.group, d), torch.float16),
                  "k_zero": ((b, h, capacity // f.group, d), torch.float16)}
        if f.name == "mixed":
            shapes.update(v_codes=((b, h, capacity, d), FP8), v_scale=((b, h, capacity), torch.float16))
        else:
            shapes.update(v_codes=((b, h, capacity, d * f.value_bits // 8), torch.uint8),
                          v_scale=((b, h, capacity, d // max(f.value_group, 1)), torch.float16),
                          v_zero=((b, h, capacity, d // max(f.value_group, 1)), torch.float16))
        return shapes

    def store_tensors(self) -> dict[str, torch.Tensor]:
        names = list(self._shapes(0)) + (["win_k", "win_v"] if self.fmt.has_window else [])
        names += ["sink_k", "sink_v"] if self.fmt.sinks else []
        return {name: getattr(self, name) for name in names}

    @property
    def kernels(self):
        from .kernels import format_module

        return format_module(self.fmt.name)

    def allocate(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device, capacity: int = 0) -> None:
        """Allocate for `capacity` tokens, sinks included (the stream's part rounded up to
        `capacity_step`; a ring: its window)."""
        self.fmt.check(head_dim)
        self.device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0": compared with query.device
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.dtype = dtype
        self.store_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
        if self.ring:
            self.capacity = self.sliding_window
        else:
            need = self.fmt.stream_len(max(capacity, self.reserved))
            self.capacity = _round_up(max(need, 1), max(self.capacity_step, self.fmt.group))
        for name, (shape, dt) in self._shapes(self.capacity).items():
            setattr(self, name, torch.zeros(shape, dtype=dt, device=self.device))
        if self.fmt.has_window:
            window = (batch, heads, self.fmt.window, head_dim)
            self.win_k = torch.zeros(window, dtype=self.store_dtype, device=self.device)
            self.win_v = torch.zeros_like(self.win_k)
        if self.fmt.sinks:
            self.sink_k = torch.zeros((batch, heads, self.fmt.sink_slots, head_dim), dtype=self.store_dtype,
                                      device=self.device)
            self.sink_v = torch.zeros_like(self.sink_k)
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=self.device)
        self.host_lengths = [0] * batch
        self._plan, self.is_initialized = None, True

    def reserve(self, total: int) -> bool:
        """Room for `total` tokens per sequence; True if the tensors were reallocated (a captured
        graph that read the old ones must be captured again). Never call it inside a capture."""
        self.reserved = max(self.reserved, total)
        need = self.fmt.stream_len(total)
        if self.ring or not self.is_initialized or need <= self.capacity:
            return False
        old = {name: getattr(self, name) for name in self._shapes(0)}
        self.capacity = _round_up(need, max(self.capacity_step, self.fmt.group))
        for name, (shape, dt) in self._shapes(self.capacity).items():
            new = torch.zeros(shape, dtype=dt, device=self.device)
            new[:, :, : old[name].shape[2]].copy_(old[name])
            setattr(self, name, new)
        self._plan = None
        return True

    def ensure_room(self, tokens: int) -> None:
        total = max(self.host_lengths) + tokens
        if self.ring or self.fmt.stream_len(total) <= self.capacity:
            return
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise ValueError(f"static store ({self.fmt.name}) holds {self.capacity + self.fmt.sinks} tokens and the "
                             f"captured step needs {total}: call reserve() with the total length before capturing")
        self.reserve(total)

    # transformers layer API --------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.allocate(b, h, d, key_states.dtype, key_states.device, self.reserved)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, q, d = key_states.shape
        if (b, h, d) != (self.batch, self.heads, self.head_dim) or value_states.shape != key_states.shape:
            raise ValueError(f"key/value states {tuple(key_states.shape)}/{tuple(value_states.shape)} do not fit "
                             f"the store's (batch, kv heads, head_dim) = {(self.batch, self.heads, self.head_dim)}")
        if q == 1 and self.fused:
            self.ensure_room(1)
            self.kernels.write(self, key_states, value_states)
            self.host_lengths = [n + 1 for n in self.host_lengths]
            handle = FusedKV(self)
            return handle, handle
        check_states(key_states, value_states, f"static store ({self.fmt.name})")
        return self.append(key_states, value_states)

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor, counts: list[int] | None = None):
        """Eager append (prefill). Uniform: every sequence gets all tokens; returns the K/V
        attention must see (model dtype). Ragged (`counts` per sequence): sequence i gets its first
        counts[i] tokens; returns None (tests and ragged batches build stores this way)."""
        if counts is not None:
            for i, c in enumerate(counts):
                self._append_rows(slice(i, i + 1), key_states[i : i + 1, :, :c], value_states[i : i + 1, :, :c])
            self.lengths.copy_(torch.tensor(self.host_lengths, dtype=self.lengths.dtype))
            return None
        if len(set(self.host_lengths)) > 1:
            raise ValueError("the sequences hold different lengths: append to them with counts=")
        view = self._append_rows(slice(None), key_states, value_states)
        self.lengths.fill_(self.host_lengths[0])
        return view

    def _append_rows(self, rows: slice, k: torch.Tensor, v: torch.Tensor):
        n, t = self.host_lengths[rows][0], k.shape[2]
        self.ensure_room(t)
        for i in range(*rows.indices(self.batch)):
            self.host_lengths[i] = n + t
        k16, v16 = k.to(self.store_dtype), v.to(self.store_dtype)
        if self.fmt.name == "plain":
            got = write_positions(self.keys[rows], self.values[rows], n, k16, v16, self.sliding_window)
            return got[0].to(k.dtype), got[1].to(v.dtype)
        if self.fmt.name == "int8":
            for prefix, x in (("k", k), ("v", v)):
                codes, scale = quantize_int8_per_token(x)
                getattr(self, f"{prefix}_codes")[rows, :, n : n + t] = codes
                getattr(self, f"{prefix}_scale")[rows, :, n : n + t] = scale.squeeze(-1)
        else:  # the sequence's first `sinks` tokens stay 16-bit for good; the stream follows them
            take = max(min(self.fmt.sinks - n, t), 0)
            if take:
                self.sink_k[rows, :, n : n + take] = k16[:, :, :take]
                self.sink_v[rows, :, n : n + take] = v16[:, :, :take]
            self._append_blocks(rows, self.fmt.stream_len(n), k16[:, :, take:], v16[:, :, take:])
        return self.dequantized(k.dtype, rows)

    def _append_blocks(self, rows: slice, n: int, k16: torch.Tensor, v16: torch.Tensor) -> None:
        """Per-channel formats: quantize the blocks these tokens complete, window the rest. `n`:
        stream tokens held before them (positions after the sinks)."""
        f, t = self.fmt, k16.shape[2]
        s0, s1 = f.stream_stored(n), f.stream_stored(n + t)
        if s1 > s0:  # block tokens come from the window (older ones) and from the chunk
            old = torch.arange(s0, min(n, s1), device=self.device) % f.window
            for prefix, new, spec in (("k", k16, f.key_spec), ("v", v16, f.value_spec)):
                win = getattr(self, f"win_{prefix}")[rows]
                block = torch.cat([win.index_select(2, old), new[:, :, : max(s1 - n, 0)]], dim=2).float()
                for name, part in encode(block, spec).items():
                    span = 1 if name == "codes" or spec[0] != "channel" else f.group
                    if part.dim() == 4 and part.shape[-1] == 1 and spec[0] == "fp8":
                        part = part.squeeze(-1)
                    getattr(self, f"{prefix}_{name}")[rows, :, s0 // span : s1 // span] = part
        keep = max(s1, n)  # positions from here on stay in (or enter) the window
        slots = torch.arange(keep, n + t, device=self.device) % f.window
        self.win_k[rows].index_copy_(2, slots, k16[:, :, keep - n :])
        self.win_v[rows].index_copy_(2, slots, v16[:, :, keep - n :])

    def dequantized(self, dtype: torch.dtype, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [b, H, n, D] of sequences `rows` (which must hold the same n), in position order.
        A ring returns its slots in slot order (attention does not depend on the order)."""
        n = self.host_lengths[rows][0]
        f = self.fmt
        if f.name == "plain":
            n = min(n, self.capacity)
            return self.keys[rows, :, :n].to(dtype), self.values[rows, :, :n].to(dtype)
        if f.name == "int8":
            return (dequantize_int8(self.k_codes[rows, :, :n], self.k_scale[rows, :, :n, None], dtype),
                    dequantize_int8(self.v_codes[rows, :, :n], self.v_scale[rows, :, :n, None], dtype))
        m = f.stream_len(n)
        s = f.stream_stored(m)
        slots = torch.arange(s, m, device=self.device) % f.window
        out = []
        for prefix, spec in (("k", f.key_spec), ("v", f.value_spec)):
            rows_of = {name: s // (f.group if name != "codes" and spec[0] == "channel" else 1)
                       for name in ("codes", "scale", "zero")}
            enc = {name: getattr(self, f"{prefix}_{name}")[rows, :, : rows_of[name]]
                   for name in ("codes", "scale", "zero") if hasattr(self, f"{prefix}_{name}")}
            if spec[0] == "fp8":
                enc["scale"] = enc["scale"].unsqueeze(-1)
            window = getattr(self, f"win_{prefix}")[rows].index_select(2, slots).to(dtype)
            sinks = getattr(self, f"sink_{prefix}")[rows, :, : n - m].to(dtype) if f.sinks else window[:, :, :0]
            out.append(torch.cat([sinks, decode(enc, spec, dtype), window], dim=2))
        return out[0], out[1]

    def attend(self, query: torch.Tensor, scaling: float | None = None, out: torch.Tensor | None = None):
        """Fused decode attention over the filled store: [B, 1, Hq, D] (transformers' layout)."""
        from .kernels.common import check_query

        scale = self.head_dim**-0.5 if scaling is None else float(scaling)
        plan = self._plan
        if plan is None or plan.qh * self.heads != query.shape[1]:
            plan = self._plan = self.kernels.plan(self, query, self.workspace)
        else:
            check_query(self, query)
        return self.kernels.attend(self, query, scale, plan, out)

    def get_seq_length(self) -> int:
        return max(self.host_lengths, default=0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        n = self.get_seq_length()
        if self.sliding_window is None:
            return n + query_length, 0
        return min(n, self.sliding_window - 1) + query_length, max(n - self.sliding_window + 1, 0)

    def get_max_length(self) -> int:
        return self.sliding_window if self.ring else -1

    def reset(self) -> None:
        if self.is_initialized:  # stale slots stay; the lengths say nothing is there
            self.lengths.zero_()
            self.host_lengths = [0] * self.batch

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:  # in place: a captured graph reads these addresses
            for t in [*self.store_tensors().values(), self.lengths]:
                t.copy_(t.index_select(0, beam_idx.to(t.device)))
            self.host_lengths = [self.host_lengths[i] for i in beam_idx.tolist()]

    def offload(self):
        raise NotImplementedError("a static store stays on its device (a captured graph reads its addresses)")

    # bytes ---------------------------------------------------------------------------------------
    def filled_nbytes(self, extra_tokens: int = 0) -> int:
        """Bytes of the filled part (codes + scales + zeros + window + sinks), `extra_tokens` more per sequence."""
        if not self.is_initialized:
            return 0
        f, total = self.fmt, 0
        per_token = {name: t[0, :, :1].numel() * t.element_size() for name, t in self.store_tensors().items()}
        for n in self.host_lengths:
            n = min(n + extra_tokens, self.capacity) if self.ring else n + extra_tokens
            m = f.stream_len(n)
            s = f.stream_stored(m)
            for name, nbytes in per_token.items():
                if name.startswith("sink_"):
                    total += (n - m) * nbytes
                elif name.startswith("win_"):
                    total += (m - s) * nbytes
                else:
                    total += (s // f.group if name in ("k_scale", "k_zero") and f.has_window else s) * nbytes
        return total

    def bytes_per_step(self) -> int:
        """KV bytes the next decode step's attention reads: the filled part after its token is in."""
        return self.filled_nbytes(extra_tokens=1)


def reference_attention(layer: StaticStoreLayer, query: torch.Tensor, scale: float) -> torch.Tensor:
    """Dequantize-then-attention, the fused kernels' reference (tests, GPU checks): each sequence's
    filled K/V dequantized in float32, softmax attention in float64. [B, 1, Hq, D] float64."""
    qh = query.shape[1] // layer.heads
    out = []
    for b in range(layer.batch):
        keys, values = (t.double().repeat_interleave(qh, 1) for t in layer.dequantized(torch.float32, slice(b, b + 1)))
        probs = (query[b : b + 1].double() @ keys.transpose(-1, -2) * scale).softmax(-1)
        out.append((probs @ values).transpose(1, 2))
    return torch.cat(out)


class StaticStoreCache(Cache):
    """A transformers `Cache` of `StaticStoreLayer`s: global layers in `fmt`, sliding ones as rings.
    Bad settings (head_dim, group size, no Triton) fail here, when the cache is built."""

    def __init__(self, config: PretrainedConfig, fmt: StoreFormat, capacity: int = 0, capacity_step: int = 1024,
                 split_tokens: int | None = None):
        from .kernels import require_triton
        from .kernels.common import Workspace

        require_triton()
        _, head_dim = kv_geometry(config)
        fmt.check(head_dim)
        self.fmt, self.workspace = fmt, Workspace()
        layers = [StaticStoreLayer(fmt, s.sliding_window, capacity_step, self.workspace, split_tokens=split_tokens)
                  for s in layer_specs(config)]
        super().__init__(layers=layers)
        if capacity:
            self.reserve(capacity)

    def reserve(self, total: int) -> bool:
        """Room for `total` tokens per sequence in every global layer; True if any reallocated."""
        return any([layer.reserve(total) for layer in self.layers])

    def filled_nbytes(self) -> int:
        return sum(layer.filled_nbytes() for layer in self.layers)

    def bytes_per_step(self) -> int:
        return sum(layer.bytes_per_step() for layer in self.layers)

    def check_room(self, tokens: int = 1) -> None:
        for layer in self.layers:
            held = layer.get_seq_length() + tokens
            if layer.is_initialized and not layer.ring and layer.fmt.stream_len(held) > layer.capacity:
                raise ValueError(f"static store ({layer.fmt.name}) holds {layer.capacity + layer.fmt.sinks} tokens, "
                                 f"{layer.get_seq_length()} are stored and {tokens} more were asked: reserve() first")

    def save_state(self) -> list:
        """Host and device lengths, to undo the steps a graph driver runs while warming up."""
        return [(list(layer.host_lengths), layer.lengths.clone()) for layer in self.layers if layer.is_initialized]

    def load_state(self, state: list) -> None:
        for layer, (host, device) in zip([la for la in self.layers if la.is_initialized], state):
            layer.host_lengths = list(host)
            layer.lengths.copy_(device)

    def advance(self, tokens: int = 1) -> None:
        """Host bookkeeping after a graph replay (the replay advanced the device lengths)."""
        for layer in self.layers:
            layer.host_lengths = [n + tokens for n in layer.host_lengths]
