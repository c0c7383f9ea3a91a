"""Storage formats of the static KV store (optim.kv_static) that the fused kernels read in place:
16-bit (the baseline, and every sliding-window ring), int8 per token, kv_mixed (int4 per-channel
keys, fp8 values) and KIVI (2-bit per-channel keys, 2-bit per-token value groups). Each maps onto
the codecs of optim.kv_quant, so a store and a torch-path cache hold the same codes."""

from __future__ import annotations

from dataclasses import dataclass

HEAD_DIMS = (64, 128, 256)  # what the fused kernels are built and tested for

@dataclass(frozen=True)
class StoreFormat:
    """How one layer stores its K/V. Per-channel keys (`group` > 1) keep the unfinished block and
    `residual` more recent tokens in a 16-bit window of `window` slots, and the first `sinks`
    tokens of the sequence in 16 bits for good (attention sinks, as the torch path's layers do).
    The tokens after the sinks form the *stream*: stream index i is position sinks + i, held in
    quantized store row i or in window slot i % window."""

    name: str  # plain | int8 | mixed | kivi
    key_bits: int = 16
    value_bits: int = 16
    group: int = 1  # tokens per key scale block
    residual: int = 0
    value_group: int = 0  # KIVI: channels per value scale
    sinks: int = 0  # first tokens kept in 16 bits (per-channel formats only)

    @property
    def has_window(self) -> bool:
        return self.name in ("mixed", "kivi")

    @property
    def window(self) -> int:
        """Ring slots: holds up to residual + group - 1 tokens; a whole number of blocks, so the
        block a decode step completes never wraps inside the ring."""
        return self.group * (-(-self.residual // self.group) + 1) if self.has_window else 0

    @property
    def sink_slots(self) -> int:
        """Slots of the sink buffer: `sinks` padded to a power of two >= 16 (a tile of the kernel's
        dots); only the first `sinks` are ever filled, read or counted."""
        return max(16, 1 << (self.sinks - 1).bit_length()) if self.sinks else 0

    def stream_len(self, n: int) -> int:
        """Tokens after the sinks when n are held."""
        return max(n - self.sinks, 0)

    def stream_stored(self, m: int) -> int:
        """Stream tokens in the quantized store when the stream holds m (kv_quant.BlockKVLayer's rule)."""
        return max(m - self.residual, 0) // self.group * self.group if self.has_window else m

    def stored_len(self, n: int) -> int:
        """Tokens in the quantized store when n are held, sinks included in n."""
        return self.stream_stored(self.stream_len(n))

    @property
    def key_spec(self) -> tuple:
        return ("channel", self.key_bits, self.group)

    @property
    def value_spec(self) -> tuple:
        return ("fp8",) if self.name == "mixed" else ("token", self.value_bits, self.value_group)

    def check(self, head_dim: int) -> None:
        what = f"static store ({self.name})"
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"{what}: head_dim {head_dim} is not supported by the fused kernels (one of {HEAD_DIMS})")
        if self.has_window:
            if self.group not in (16, 32, 64, 128, 256):
                raise ValueError(f"{what}: key group size must be a power of two in [16, 256], got {self.group}")
            if self.residual < 0:
                raise ValueError(f"{what}: residual must be >= 0, got {self.residual}")
            if self.sinks < 0:
                raise ValueError(f"{what}: sinks must be >= 0, got {self.sinks}")
            if self.key_bits not in (2, 4) or (self.name == "kivi" and self.value_bits not in (2, 4)):
                raise ValueError(f"{what}: 2- or 4-bit codes only, got keys {self.key_bits} / values {self.value_bits}")
        elif self.sinks:
            raise ValueError(f"{what}: sink tokens are kept by the per-channel formats only (mixed, kivi)")
        if self.name == "kivi" and (self.value_group not in (16, 32, 64, 128, 256) or head_dim % self.value_group):
            raise ValueError(f"{what}: value group {self.value_group} must be a power of two dividing {head_dim}")


PLAIN = StoreFormat("plain")
INT8 = StoreFormat("int8", key_bits=8, value_bits=8)


def mixed_format(group: int = 64, residual: int = 0, sinks: int = 0) -> StoreFormat:
    return StoreFormat("mixed", key_bits=4, value_bits=8, group=group, residual=residual, sinks=sinks)


def kivi_format(bits: int = 2, group: int = 32, value_group: int = 32, residual: int = 128,
                value_bits: int | None = None, sinks: int = 0) -> StoreFormat:
    """KIVI's layout: per-channel keys, per-token value groups; `value_bits` other than `bits` for
    our kv_k4v4 / kv_k4v2 layouts (optim.kv_format), which store the same way."""
    return StoreFormat("kivi", key_bits=bits, value_bits=value_bits or bits, group=group, residual=residual,
                       value_group=value_group, sinks=sinks)
