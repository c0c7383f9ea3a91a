"""The model's rotary position embedding (RoPE), undone and redone inside a KV cache.

Why: a cache receives keys after RoPE. Rotation by position smears each channel's range over a
block of tokens (a high-frequency channel pair sweeps a full circle within a 64-token block), so
per-channel key quantization groups values that pre-RoPE sat in a narrow, outlier-stable range.
KVQuant (Hooper et al., 2024) quantizes keys before RoPE for that reason. A cache can do the same
without touching the model: un-rotate keys as they enter the compressed store, quantize, and rotate
the dequantized keys back by their positions when attention reads them.

The rotation is rebuilt from the model config with transformers' own RoPE initialisers, so it is
exactly the one the model applied (a test compares it with the model's rotary embedding). Positions
are the cache index: the cache must hold one sequence per row starting at position 0 (no left
padding), as in our quality runs. Only position-independent RoPE types are supported; dynamic ones
(scaling that changes with the sequence length) would need the model's runtime state and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from .base import text_config

DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


def _rope_parameters(cfg, layer_type: str) -> dict:
    params = getattr(cfg, "rope_parameters", None)
    if params is None:  # older configs keep the base on the config itself
        return {"rope_type": "default", "rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    if layer_type in params and isinstance(params[layer_type], dict):  # per layer type (Gemma-3)
        return params[layer_type]
    return params


@dataclass(eq=False)
class RopeRotation:
    """RoPE of one layer type: `inv_freq` [rotary_dim / 2] and the cos/sin scaling.

    A plain object, not a tensor attribute of the layer, so `cache_nbytes` does not count it: it is a
    model constant (rotary_dim / 2 floats), not stored tokens.
    """

    inv_freq: torch.Tensor
    scaling: float = 1.0

    @classmethod
    def from_config(cls, config: PretrainedConfig, layer_type: str = "full_attention") -> "RopeRotation":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        cfg = text_config(config)
        params = _rope_parameters(cfg, layer_type)
        rope_type = params.get("rope_type", "default")
        if rope_type in DYNAMIC_ROPE_TYPES:
            raise ValueError(f"pre-RoPE keys: RoPE type {rope_type!r} changes with the sequence length; "
                             "only position-independent RoPE types are supported")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dim = int(head_dim * getattr(cfg, "partial_rotary_factor", 1.0))
        if rope_type == "default":  # each model class computes it itself; this is the same formula
            inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            return cls(inv_freq, 1.0)
        if rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"pre-RoPE keys: unknown RoPE type {rope_type!r}")
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, None, layer_type=layer_type)
        return cls(inv_freq.float(), float(scaling))

    def cos_sin(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [length, rotary_dim] for positions start..start+length-1, as the model builds them."""
        inv = self.inv_freq.to(device)
        pos = torch.arange(start, start + length, device=device, dtype=torch.float)
        freqs = torch.outer(pos, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.scaling, emb.sin() * self.scaling

    def rotate(self, x: torch.Tensor, start: int, inverse: bool = False) -> torch.Tensor:
        """Apply (or undo) RoPE on float `x` [B, H, T, D] whose tokens sit at positions start..start+T-1."""
        if x.shape[-2] == 0:
            return x
        cos, sin = self.cos_sin(start, x.shape[-2], x.device)
        rot = cos.shape[-1]
        head, rest = x[..., :rot], x[..., rot:]
        half = rot // 2
        turned = torch.cat([-head[..., half:], head[..., :half]], dim=-1)  # rotate_half, as in transformers
        if inverse:  # the transpose of a scaled rotation, divided by the scale squared
            out = (head * cos - turned * sin) / (self.scaling**2)
        else:
            out = head * cos + turned * sin
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out
