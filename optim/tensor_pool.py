"""A bounded, thread-safe pool of reusable tensors, bucketed by byte size class.

The report claims a memory pool allocates 20-40% faster and fragments 30-50% less than the
default. PyTorch's CUDA caching allocator already *is* a pool, so this one is built to be a fair
contender: blocks are raw byte buffers bucketed per device by size class (four classes per power
of two, so rounding wastes at most 25% of a block), any dtype/shape is served as a view of a
block, and returned blocks are reused LIFO (the most recently used block is the likeliest to be
hot). Whether it beats `torch.empty` is for the benchmark to say, not for this docstring.

Ownership is tracked by the storage's data pointer: a block is either in a free list or in the
`in_use` map, never both, so one block is never handed to two holders. Every error is raised
before the pool's state changes, so the pool stays consistent after a bad call.
"""

from __future__ import annotations

import operator
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from typing import Iterator, Sequence

import torch

MIN_BLOCK_BYTES = 512  # the CUDA caching allocator's own rounding; smaller classes buy nothing


class PoolError(ValueError):
    """A request or a return the pool cannot honour; the pool's state is unchanged."""


class PoolExhausted(MemoryError):
    """A request would push the bytes held past the pool's bound even after evicting free blocks."""


def size_class(nbytes: int) -> int:
    """Round up to one of four classes per power of two (512, 640, 768, 896, 1024, 1280, ...)."""
    if nbytes <= MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    step = 1 << max((nbytes - 1).bit_length() - 3, 0)  # a quarter of the power of two below
    return -(-nbytes // step) * step


def _check_shape(shape) -> tuple[int, ...]:
    if type(shape) is tuple and shape and all(type(d) is int and d > 0 for d in shape):
        return shape  # the common case, kept cheap: it runs on every request
    try:
        dims = (operator.index(shape),) if not isinstance(shape, (tuple, list, torch.Size)) else tuple(
            operator.index(d) for d in shape
        )
    except TypeError:
        raise PoolError(f"shape must be integers, got {shape!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise PoolError(f"shape must have positive sizes (zero-size tensors are not pooled), got {dims}")
    return dims


_STRIDES: dict[tuple[int, ...], tuple[int, ...]] = {}


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = _STRIDES.get(shape)
    if strides is None:
        acc, out = 1, []
        for d in reversed(shape):
            out.append(acc)
            acc *= d
        strides = tuple(reversed(out))
        if len(_STRIDES) < 4096:  # a bounded memo: workloads repeat a few hundred shapes at most
            _STRIDES[shape] = strides
    return strides


@dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot (taken under the pool's lock)."""

    requests: int
    hits: int
    misses: int
    evictions: int
    returns: int
    refusals: int  # requests refused by the bound (not counted in requests)
    bytes_held: int  # all blocks the pool owns, free and in use (size-class bytes)
    bytes_in_use: int  # bytes the holders asked for (so rounding counts as fragmentation)
    blocks_free: int
    blocks_in_use: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def fragmentation(self) -> float:
        """1 - in_use/held: idle free blocks plus size-class rounding, as a share of what is held."""
        return 1.0 - self.bytes_in_use / self.bytes_held if self.bytes_held else 0.0


@dataclass
class _Block:
    buffer: torch.Tensor  # uint8, size-class bytes
    nbytes: int = 0  # bytes handed out (0 while free)
    dtype: torch.dtype | None = None
    typed: dict | None = None  # dtype -> the whole buffer viewed as that dtype (made once)

    def as_tensor(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.typed is None:
            self.typed = {}
        flat = self.typed.get(dtype)
        if flat is None:
            flat = self.typed[dtype] = self.buffer.view(dtype)
        # One as_strided instead of slice + view + view: each tensor op costs about as much as a
        # whole torch.empty, so the pool's hot path has to make do with one.
        return flat.as_strided(shape, _contiguous_strides(shape))


class TensorPool:
    """`get(shape, dtype)` hands out a tensor backed by a pooled block; `put(t)` takes it back.

    max_bytes bounds the bytes held (free + in use). When a new block would cross it, free blocks
    are evicted (largest first, as they free the most with the fewest evictions); if the blocks in
    use alone leave no room, `PoolExhausted` is raised. A request larger than the bound is a
    `PoolError`: no amount of eviction could serve it.
    """

    def __init__(self, device: str | torch.device = "cpu", max_bytes: int | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise PoolError(f"max_bytes must be positive, got {max_bytes}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._free: dict[int, list[_Block]] = {}  # size class -> LIFO stack of free blocks
        self._in_use: dict[int, _Block] = {}  # storage data_ptr -> block handed out
        self._held = self._in_use_bytes = 0
        self._requests = self._hits = self._misses = self._evictions = self._returns = self._refusals = 0

    # -- handing out ---------------------------------------------------------------------------

    def get(self, shape: Sequence[int] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialized tensor of `shape`/`dtype` on the pool's device, owned by the caller."""
        shape = _check_shape(shape)
        if not isinstance(dtype, torch.dtype):
            raise PoolError(f"dtype must be a torch.dtype, got {dtype!r}")
        nbytes = prod(shape) * dtype.itemsize
        cls = size_class(nbytes)
        if self.max_bytes is not None and cls > self.max_bytes:
            raise PoolError(
                f"request of {nbytes} bytes (size class {cls}) is larger than the pool bound of {self.max_bytes} bytes"
            )
        with self._lock:
            stack = self._free.get(cls)
            if stack:
                block = stack.pop()
                self._hits += 1
            else:
                block = self._new_block(cls)  # may raise; nothing below has happened then
                self._misses += 1
            self._requests += 1
            block.nbytes, block.dtype = nbytes, dtype
            self._in_use[block.buffer.data_ptr()] = block
            self._in_use_bytes += nbytes
        return block.as_tensor(shape, dtype)

    def _new_block(self, cls: int) -> _Block:
        """Allocate a block (lock held), evicting free blocks first if the bound needs it."""
        if self.max_bytes is not None and self._held + cls > self.max_bytes:
            self._evict(self._held + cls - self.max_bytes)
            if self._held + cls > self.max_bytes:
                self._refusals += 1
                raise PoolExhausted(
                    f"pool bound {self.max_bytes} bytes: {self._in_use_bytes} bytes are in use by holders and "
                    f"{self._held} held, no room for a {cls}-byte block; return tensors or raise max_bytes"
                )
        buffer = torch.empty(cls, dtype=torch.uint8, device=self.device)
        self._held += cls
        return _Block(buffer)

    def _evict(self, need: int) -> None:
        for cls in sorted(self._free, reverse=True):
            stack = self._free[cls]
            while stack and need > 0:
                stack.pop()
                self._held -= cls
                self._evictions += 1
                need -= cls
            if not stack:
                del self._free[cls]
            if need <= 0:
                return

    # -- taking back ---------------------------------------------------------------------------

    def put(self, tensor: torch.Tensor) -> None:
        """Return a tensor from `get`. The caller must not use it afterwards: its memory is reused."""
        if not isinstance(tensor, torch.Tensor):
            raise PoolError(f"put() takes a tensor, got {type(tensor).__name__}")
        if tensor.device != self.device:
            raise PoolError(f"tensor on device {tensor.device} returned to a pool on device {self.device}")
        key = tensor.data_ptr()  # what get() returned starts at its block's first byte
        with self._lock:
            block = self._in_use.get(key)
            if block is None:  # perhaps a view into the block: look its storage up instead
                key = tensor.untyped_storage().data_ptr()
                block = self._in_use.get(key)
            if block is None:
                raise PoolError("tensor was not handed out by this pool, or was already returned")
            if tensor.dtype != block.dtype:
                raise PoolError(f"tensor has dtype {tensor.dtype} but was handed out as {block.dtype}")
            del self._in_use[key]
            self._in_use_bytes -= block.nbytes
            self._returns += 1
            block.nbytes, block.dtype = 0, None
            self._free.setdefault(block.buffer.numel(), []).append(block)

    @contextmanager
    def borrow(self, shape: Sequence[int] | int, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """`with pool.borrow(shape, dtype) as t:` — returned to the pool on exit, even on error."""
        tensor = self.get(shape, dtype)
        try:
            yield tensor
        finally:
            self.put(tensor)

    # -- housekeeping --------------------------------------------------------------------------

    def owns(self, tensor: torch.Tensor) -> bool:
        with self._lock:
            return tensor.untyped_storage().data_ptr() in self._in_use

    def clear(self) -> int:
        """Drop every free block (back to the device allocator). Returns the bytes released."""
        with self._lock:
            released = sum(cls * len(stack) for cls, stack in self._free.items())
            self._evictions += sum(len(stack) for stack in self._free.values())
            self._free.clear()
            self._held -= released
            return released

    def largest_free_block(self) -> int:
        with self._lock:
            return max((cls for cls, stack in self._free.items() if stack), default=0)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                requests=self._requests,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                returns=self._returns,
                refusals=self._refusals,
                bytes_held=self._held,
                bytes_in_use=self._in_use_bytes,
                blocks_free=sum(len(s) for s in self._free.values()),
                blocks_in_use=len(self._in_use),
            )

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping disagrees with the blocks (tests, debugging)."""
        with self._lock:
            free = [b for s in self._free.values() for b in s]
            held = sum(b.buffer.numel() for b in free) + sum(b.buffer.numel() for b in self._in_use.values())
            assert held == self._held, (held, self._held)
            assert sum(b.nbytes for b in self._in_use.values()) == self._in_use_bytes
            ptrs = [b.buffer.data_ptr() for b in free] + list(self._in_use)
            assert len(ptrs) == len(set(ptrs)), "a block is both free and in use, or listed twice"
            assert self._hits + self._misses == self._requests
            assert self.max_bytes is None or self._held <= self.max_bytes

