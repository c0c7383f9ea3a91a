"""Rounding and quantization helpers of the write kernels, each the exact counterpart of the
PyTorch codec it must agree with bit for bit (optim.kv_quant, optim.kv_int8): IEEE division, round
half to even, fp8 e4m3 rounding, min/max (scale, zero) and code packing."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def div_ieee(x, y):
    """x / y rounded to nearest, as torch divides. Triton's `/` on the GPU is an approximate
    division (up to 2 ulp): a value next to a rounding boundary would then get the neighbouring
    code (seen on an H200: a few int4/2-bit codes off by one against optim.kv_quant.encode)."""
    return tl.math.div_rn(x, y + tl.zeros_like(x))  # div_rn takes two float32 tensors of x's shape


@triton.jit
def round_half_even(x):
    """torch.round for float32 (libdevice.rint is missing from the interpreter; floor(x + 0.5)
    would round 0.49999997 up)."""
    r = tl.floor(x)
    frac = x - r
    up = (frac > 0.5) | ((frac == 0.5) & ((r.to(tl.int32) & 1) == 1))
    return tl.where(up, r + 1.0, r)


@triton.jit
def fp8_e4m3_round(x):
    """x rounded to the nearest float8 e4m3 value (ties to even), as float32, clamped to +-448.
    Converting an exactly representable value is then exact everywhere (the interpreter rounds
    fp8 conversions wrongly at binade edges)."""
    e = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    quantum = ((tl.maximum(e, -6) - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
    y = round_half_even(x / quantum) * quantum  # a power of two: exact either way
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    return tl.where(y == 0, x * 0.0, y)  # keep the sign of zero, as torch does


@triton.jit
def minmax_params(lo, hi, LEVELS: tl.constexpr):
    """fp16 (scale, zero) of optim.kv_quant._minmax_quantize: zero rounded down, scale up, so every
    value stays inside the code range after the fp16 rounding of the parameters."""
    zero = lo.to(tl.float16)
    zero = tl.where(zero.to(tl.float32) > lo, (lo - tl.abs(lo) * 0.0009765625).to(tl.float16), zero)
    scale = tl.maximum(div_ieee(hi - zero.to(tl.float32), LEVELS * 1.0), 1e-7)
    scale = (scale * 1.0009765625).to(tl.float16)
    return scale, zero


@triton.jit
def minmax_codes(x, scale, zero, LEVELS: tl.constexpr):
    codes = round_half_even(div_ieee(x - zero.to(tl.float32), scale.to(tl.float32)))
    return tl.minimum(tl.maximum(codes, 0.0), LEVELS * 1.0).to(tl.int32)


@triton.jit
def pack_codes(codes, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """int32 codes [ROWS, D] -> uint8 [ROWS, D*BITS/8], consecutive channels per byte, lowest first
    (optim.kv_quant.pack)."""
    PER: tl.constexpr = 8 // BITS
    shifts = tl.arange(0, PER) * BITS
    grouped = tl.reshape(codes, (ROWS, D // PER, PER))
    return tl.sum(grouped << shifts[None, None, :], axis=2).to(tl.uint8)
