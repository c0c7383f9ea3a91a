"""The `ollm_fused` attention function, and the `kernel` switch of the KV methods that use it.

transformers' Llama/Gemma-3 attention hands whatever `cache.update` returned straight to the
attention function. A `StaticStoreLayer` returns a `FusedKV` handle for one-token decode steps;
`fused_attention` sends those to the layer's split-K Triton kernel, which reads the compressed
store in place. Everything else (prefill chunks, whose update returns dequantized tensors) goes
to transformers' own SDPA function with the mask transformers built, exactly as `sdpa` would:
the function is a superset of `sdpa`, so attaching it never changes a non-fused path.

Why attach instead of a special case in the harness: the harness already calls `attach(model,
...)`/`detach(model)` on any method that has them (attention mechanisms, kvpress peers); a KV method
with `kernel="triton"` uses the same protocol (`KernelChoice`), and with `kernel="torch"` both
are no-ops. Loading a model with `attn_implementation="ollm_fused"` after `register()` works too.

The fused path ignores `attention_mask`: one query token sees every stored token of its sequence
(sliding layers are rings that hold exactly their window). Left padding is therefore not
supported in fused decode; ragged batches use per-sequence lengths instead.
"""

from __future__ import annotations

from typing import ClassVar

NAME = "ollm_fused"
KERNELS = ("torch", "triton")
_previous: dict[int, str] = {}


def fused_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                    softcap=None, **kwargs):
    from .kv_static import FusedKV

    if isinstance(key, FusedKV):
        if softcap is not None:
            raise ValueError(f"{NAME}: attention logit softcapping is not supported by the fused kernels")
        if dropout:
            raise ValueError(f"{NAME}: dropout is not supported by the fused kernels")
        return key.attend(query, scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if softcap is not None:
        kwargs["softcap"] = softcap
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  sliding_window=sliding_window, **kwargs)


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, fused_attention)
    # Without a mask builder under the same name transformers hands custom attention no mask.
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def attach(model) -> None:
    from .attn_base import swappable

    swappable(model)
    register()
    previous = model.config._attn_implementation
    if previous != NAME:
        _previous[id(model)] = previous
        model.set_attn_implementation(NAME)


def detach(model) -> None:
    previous = _previous.pop(id(model), None)
    if previous is not None:
        model.set_attn_implementation(previous)


class KernelChoice:
    """Mixin for KV-method dataclasses with a `kernel: str = "torch"` field: "torch" keeps the
    method's PyTorch cache, "triton" builds a `StaticStoreCache` in `store_format()` and needs the
    model attached to `ollm_fused`."""

    name: ClassVar[str] = "kv"

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"{self.name}: kernel must be one of {KERNELS}, got {self.kernel!r}")

    def store_format(self):
        raise NotImplementedError

    def static_cache(self, config, **kwargs):
        from .kv_static import StaticStoreCache

        return StaticStoreCache(config, self.store_format(), **kwargs)

    def attach(self, model, context_text: str | None = None, seq_len: int | None = None) -> None:
        if self.kernel == "triton":
            attach(model)

    def detach(self, model) -> None:
        if self.kernel == "triton":
            detach(model)


__all__ = ["KERNELS", "KernelChoice", "NAME", "attach", "detach", "fused_attention", "register"]
