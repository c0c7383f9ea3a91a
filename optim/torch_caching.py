"""Peer `torch_caching` / `torch_expandable`: no pool of our own, every request is `torch.empty`.

This is what a model does by default: PyTorch's CUDA caching allocator already keeps freed blocks
and hands them out again, so it is the contender `TensorPool` and `PredictiveMemoryManager` must
beat. `alloc_conf` names the `PYTORCH_CUDA_ALLOC_CONF` it is measured under (e.g.
`expandable_segments:True`, which grows segments in place instead of adding new ones). The
allocator reads that setting once, when CUDA initialises, so this class cannot set it: whoever
runs it sets the variable before the process's first CUDA call and checks that it took effect
(`segments_expandable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TorchCachingAllocator:
    """`get(shape, dtype)` -> `torch.empty`; `put(t)` does nothing (dropping the last reference
    returns the block to the caching allocator)."""

    device: str = "cpu"
    alloc_conf: str = ""  # PYTORCH_CUDA_ALLOC_CONF this peer runs under ("" = PyTorch's default)

    def get(self, shape: Sequence[int] | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def put(self, tensor: torch.Tensor) -> None:
        pass


def wants_expandable(alloc_conf: str) -> bool:
    """Whether a PYTORCH_CUDA_ALLOC_CONF string turns expandable segments on."""
    opts = dict(part.split(":", 1) for part in alloc_conf.replace(" ", "").split(",") if ":" in part)
    return opts.get("expandable_segments", "False").lower() == "true"


def segments_expandable(device: torch.device) -> bool | None:
    """Whether the caching allocator's segments on `device` are expandable (None: CPU, or no
    segment yet). The memory snapshot reports it per segment, so this is what ran, not what was asked."""
    if device.type != "cuda":
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    segments = [seg for seg in torch.cuda.memory_snapshot() if seg.get("device", index) == index]
    return any(seg.get("is_expandable", False) for seg in segments) if segments else None


__all__ = ["TorchCachingAllocator", "segments_expandable", "wants_expandable"]
