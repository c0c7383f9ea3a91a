"""Triton kernels that read the compressed KV store in place (optim.kv_static).

One module per storage family, each with `plan` (validate + size a split-K launch), `attend`
(one query token per sequence -> [B, 1, Hq, D]) and `write` (quantize one token per sequence on
write, at the length read from the device): `plain` (16-bit, also the sliding rings), `int8`,
`channel` (per-channel keys + 16-bit window: kv_mixed's fp8 values and KIVI's 2-bit ones).
`common` holds the shared split-K pieces, `quantize` the rounding helpers of the write kernels.

Importing this package does not import Triton; `format_module` does, so `optim` works without it.
"""

from __future__ import annotations

import importlib

MODULES = {"plain": "plain", "int8": "int8", "mixed": "channel", "kivi": "channel"}  # storage format -> module
FORMATS = tuple(MODULES)


def require_triton() -> None:
    try:
        import triton  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        raise ImportError("kernel=triton needs the triton package (pip install triton); "
                          "use kernel=torch where it is missing") from exc


def format_module(name: str):
    if name not in FORMATS:
        raise ValueError(f"no fused kernels for storage format {name!r} (one of {FORMATS})")
    return importlib.import_module(f"{__name__}.{MODULES[name]}")


__all__ = ["FORMATS", "format_module", "require_triton"]
