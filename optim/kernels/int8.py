"""int8 per-token symmetric K and V (optim.kv_int8): `k_codes`/`v_codes` int8 [B, HKV, capacity, D],
`k_scale`/`v_scale` fp16 [B, HKV, capacity]. No 16-bit window: every token is quantized on write.

Codes go into tl.dot as they are (|code| <= 127 is exact in 16 bits); the key scale multiplies
the scores column-wise and the value scale the probabilities, so dequantization costs one
multiply per token instead of one per element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (attend_block, launch_attend, launch_write, load_query, make_plan, program_ids, softmax_state,
                     store_partial)
from .quantize import div_ieee, round_half_even
from .plain import block_tokens


def plan(layer, query, workspace=None):
    return make_plan(layer, query, block_tokens(layer), window=False, workspace=workspace)


def attend(layer, query: torch.Tensor, scale: float, decode_plan, out=None) -> torch.Tensor:
    store = [layer.k_codes, layer.k_scale, layer.v_codes, layer.v_scale]
    return launch_attend(_int8_attend, layer, query, scale, decode_plan, out, store,
                         BLOCK=decode_plan.block)


def write(layer, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """Quantize one token per sequence (optim.kv_int8.quantize_int8_per_token) into row `length`."""
    launch_write(_int8_write, layer, key_states, value_states, [layer.k_codes, layer.k_scale, layer.v_codes,
                                                                 layer.v_scale])


@triton.jit
def _int8_attend(Q, KC, KS, VC, VS, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT, NSPLIT, NPART,
                 HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
                 DOT: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, False)
    split = tl.program_id(1)
    start = split * SPLIT
    if start < n_tok:
        d = tl.arange(0, D)
        q = load_query(Q, b, h, sqb, sqh, d, qk_scale, QH, M).to(DOT)
        row0 = bh.to(tl.int64) * cap
        m_i, l_i, acc = softmax_state(M, D)
        end = tl.minimum(start + SPLIT, n_tok)
        for n0 in range(start, end, BLOCK):
            n = n0 + tl.arange(0, BLOCK)
            ok = n < end
            k = tl.load(KC + (row0 + n[:, None]) * D + d[None, :], mask=ok[:, None], other=0)
            k_scale = tl.load(KS + row0 + n, mask=ok, other=0.0).to(tl.float32)
            scores = tl.dot(q, tl.trans(k.to(DOT))) * k_scale[None, :]
            scores = tl.where(ok[None, :], scores, float("-inf"))
            v = tl.load(VC + (row0 + n[:, None]) * D + d[None, :], mask=ok[:, None], other=0)
            v_scale = tl.load(VS + row0 + n, mask=ok, other=0.0).to(tl.float32)
            m_i, l_i, acc = attend_block(scores, v.to(DOT), v_scale[None, :], m_i, l_i, acc, DOT)
        store_partial(PO, PM, PL, bh * NPART + split, acc, m_i, l_i, d, QH, M, D)


@triton.jit
def quantize_token(x):
    """Symmetric absmax int8 of one token, as optim.kv_int8.quantize_int8_per_token."""
    scale = div_ieee(tl.maximum(tl.max(tl.abs(x), axis=0), 1e-6), 127.0).to(tl.float16)
    scale = tl.maximum(scale.to(tl.float32), 6.103515625e-05).to(tl.float16)  # fp16 tiny
    codes = round_half_even(div_ieee(x, scale.to(tl.float32)))
    return tl.minimum(tl.maximum(codes, -127.0), 127.0).to(tl.int8), scale


@triton.jit
def _int8_write(KN, VN, KC, KS, VC, VS, LENS, skb, skh, svb, svh, cap, HKV: tl.constexpr, D: tl.constexpr):
    b = tl.program_id(0)  # one program per sequence: it alone reads and advances LENS[b]
    n_tok = tl.load(LENS + b)
    if n_tok < cap:
        d = tl.arange(0, D)
        for h in range(HKV):
            row = (b * HKV + h).to(tl.int64) * cap + n_tok
            k = tl.load(KN + b.to(tl.int64) * skb + h * skh + d).to(tl.float32)
            v = tl.load(VN + b.to(tl.int64) * svb + h * svh + d).to(tl.float32)
            k_codes, k_scale = quantize_token(k)
            v_codes, v_scale = quantize_token(v)
            tl.store(KC + row * D + d, k_codes)
            tl.store(KS + row, k_scale)
            tl.store(VC + row * D + d, v_codes)
            tl.store(VS + row, v_scale)
        tl.store(LENS + b, n_tok + 1)
