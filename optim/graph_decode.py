"""Graph-mode greedy decode over a preallocated cache (optim.kv_static.StaticStoreCache, any
format, the 16-bit baseline included): eager prefill, then one token per sequence per step, the
step captured once in a `torch.cuda.CUDAGraph` and replayed.

What makes the step capturable: the token ids and positions live in static device tensors
(`position_ids` [B, 1] is advanced on the device at the end of the step); each layer writes its
token at the length it reads from device memory and advances it (optim.kernels.*.write), and the
fused attention kernel reads that length and touches only the filled part; no mask is passed
(`attention_mask=None`, the fused kernel needs none). Nothing in the step reads a value back to
the host: on CUDA the warm-up runs under `torch.cuda.set_sync_debug_mode("error")` and the
capture itself fails on a sync; `forbid_host_sync()` gives CPU runs the same check.

The harness times `step()` with CUDA events; `bytes_per_step()` is the KV bytes one step reads.
Warm-up and capture each run the step's Python once; the driver saves the cache's lengths
(host and device) and the positions before, and restores them after, so they leave no trace.
"""

from __future__ import annotations

import contextlib

import torch

from .pointwise_fusion import fused_pointwise
from .static_kv_arena import cache_kwarg


class HostSyncError(RuntimeError):
    """A decode step read a device value on the host."""


@contextlib.contextmanager
def forbid_host_sync():
    """Make every tensor -> Python conversion raise (CPU stand-in for a CUDA sync check). Triton's
    interpreter reads kernel arguments on the host legitimately; calls from it are let through."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def guard(name):
        def refuse(self, *args, **kwargs):
            import sys

            frame = sys._getframe(1)
            if frame.f_globals.get("__name__", "").startswith("triton"):
                return saved[name](self, *args, **kwargs)
            raise HostSyncError(f"Tensor.{name}() inside a decode step reads a device value on the host")
        return refuse

    try:
        for name in names:
            setattr(torch.Tensor, name, guard(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class GraphDecoder:
    """Decode driver for a cache with `reserve`, `check_room`, `save_state`/`load_state`,
    `advance` and `bytes_per_step` (StaticStoreCache). The model must be attached to `ollm_fused`
    (optim.fused_attention.attach) so one-token steps reach the fused kernel.

    `step()` returns the logits tensor the graph writes into: the next step overwrites it, so
    clone it to keep it.
    """

    def __init__(self, model: torch.nn.Module, cache, use_graph: bool | None = None, check_sync: bool = False,
                 fuse_pointwise: bool = False):
        self.model, self.cache = model, cache
        self.kwarg = cache_kwarg(model)
        self.use_graph, self.check_sync = use_graph, check_sync
        # Capture the step with the model's norms, MLPs and rotary compiled into fused kernels
        # (optim.pointwise_fusion); `fused` names what was fused once captured.
        self.fuse_pointwise = fuse_pointwise
        self.fused: list[str] = []
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_ids = self.positions = self.static_logits = None

    def reserve(self, total_tokens: int) -> None:
        """Room for `total_tokens` per sequence; a reallocation drops the captured graph. Call it
        before the first step (a capture cannot grow the store)."""
        if self.cache.reserve(total_tokens):
            self.graph = None

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, chunk: int | None = None, **kwargs) -> torch.Tensor:
        """Eager (chunked) prefill; returns the last chunk's logits. kwargs go to the model."""
        step = chunk or input_ids.shape[1]
        for s in range(0, input_ids.shape[1], step):
            logits = self.model(input_ids=input_ids[:, s : s + step], use_cache=True, **{self.kwarg: self.cache},
                                **kwargs).logits
        n = self.cache.get_seq_length()
        self.positions = torch.full((input_ids.shape[0], 1), n, dtype=torch.long, device=input_ids.device)
        return logits

    def _forward(self) -> torch.Tensor:
        out = self.model(input_ids=self.static_ids, position_ids=self.positions, attention_mask=None, use_cache=True,
                         **{self.kwarg: self.cache})
        self.positions.add_(1)
        return out.logits

    def _load(self, input_ids: torch.Tensor) -> None:
        if self.positions is None:
            raise RuntimeError("prefill() before step()")
        if input_ids.shape != self.positions.shape:
            raise ValueError(f"step() takes input_ids of shape (batch, 1) = {tuple(self.positions.shape)}, "
                             f"got {tuple(input_ids.shape)}")
        self.cache.check_room(1)
        if self.static_ids is None:
            self.static_ids = input_ids.clone()
        self.static_ids.copy_(input_ids)

    @torch.no_grad()
    def step_eager(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The identical step without a graph (CPU, debugging); with check_sync, under the sync check."""
        self._load(input_ids)
        with self._sync_check():
            self.static_logits = self._forward()
        return self.static_logits

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One token per sequence (`input_ids` [batch, 1]) -> logits [batch, 1, vocab]."""
        if not (input_ids.is_cuda if self.use_graph is None else self.use_graph):
            return self.step_eager(input_ids)
        self._load(input_ids)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        self.cache.advance(1)
        return self.static_logits

    def bytes_per_step(self) -> int:
        return self.cache.bytes_per_step()

    def _sync_check(self):
        if not self.check_sync:
            return contextlib.nullcontext()
        if self.static_ids is not None and self.static_ids.is_cuda:
            return _cuda_sync_errors()
        return forbid_host_sync()

    def _capture(self) -> None:
        state, positions = self.cache.save_state(), self.positions.clone()

        def undo():
            self.cache.load_state(state)
            self.positions.copy_(positions)

        fusion = fused_pointwise(self.model) if self.fuse_pointwise else contextlib.nullcontext([])
        with fusion as self.fused:
            # Warm-up on a side stream (Triton compiles, cuBLAS workspaces are allocated outside the
            # graph), under the sync check; each run is undone. Compiling the fused code may read
            # device values while it benchmarks, so its first run precedes the sync check.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                if self.fuse_pointwise:
                    self._forward()
                    undo()
                for _ in range(2):
                    with _cuda_sync_errors():
                        self._forward()
                    undo()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_logits = self._forward()
            undo()  # capture ran the Python (host lengths) but no kernel


@contextlib.contextmanager
def _cuda_sync_errors():
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


__all__ = ["GraphDecoder", "HostSyncError", "forbid_host_sync"]
