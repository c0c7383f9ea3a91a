"""Per-channel keys behind a 16-bit window: the kernels of kv_mixed and KIVI (the peer), which
store keys alike and differ in their values.

Store, per layer (capacity C tokens, a multiple of G):
- `k_codes` uint8 [B, HKV, C, D*KBITS/8]: KBITS-bit codes packed along head_dim (kv_quant.pack),
  `k_scale`/`k_zero` fp16 [B, HKV, C/G, D]: per channel and block of G tokens;
- values, kv_mixed (`fp8=True`): `v_codes` float8_e4m3fn [B, HKV, C, D], `v_scale` fp16 [B, HKV, C];
  KIVI: `v_codes` uint8 [B, HKV, C, D*VBITS/8], `v_scale`/`v_zero` fp16 [B, HKV, C, D/VG], VBITS
  per token in groups of VG channels;
- `win_k`/`win_v` 16-bit [B, HKV, W, D]: the tokens not yet in a whole block (plus `residual`
  recent ones), stream index i in slot i % W;
- with S sinks, `sink_k`/`sink_v` 16-bit [B, HKV, SP, D] (SP = S padded to a power of two >= 16):
  positions 0..S-1. Store rows and window slots then hold the stream, position S + i at index i,
  and the attention has one more partial, over the sinks.
fp8 values go into the dot as they are (exact in 16 bits) and their per-token scale multiplies the
probabilities; KIVI's value scales vary along head_dim, so those are dequantized in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (attend_block, launch_attend, launch_write, load_query, make_plan, program_ids, softmax_state,
                     store_partial, stored_len)
from .quantize import div_ieee, fp8_e4m3_round, minmax_codes, minmax_params, pack_codes


def _values(layer) -> tuple[list, dict]:
    """Value tensors (fp8 has no zeros: its scales stand in, unread) and their constexprs."""
    f, fp8 = layer.fmt, layer.fmt.name == "mixed"
    tensors = [layer.v_codes, layer.v_scale, layer.v_scale if fp8 else layer.v_zero]
    return tensors, dict(FP8=fp8, VBITS=8 if fp8 else f.value_bits, VG=layer.head_dim if fp8 else f.value_group)


def plan(layer, query, workspace=None):
    return make_plan(layer, query, layer.fmt.group, window=True, workspace=workspace)


# Two warps, two pipeline stages: the unpack and dequantize of a [G, D] block keep many registers
# live, so Triton's default (4 warps, 3 stages: 168 registers a thread, 72 KB of shared memory, 3
# blocks an SM) left the loop latency-bound. On an H200 (one layer, Llama-3.1-8B shapes, bf16) this
# took kv_k4v4's launch from 259 to 190 us at 128k x 1 and 404 to 366 us at 32k x 8; k4v2, KIVI-2
# and kv_mixed gained 6-27 % alike (results/kv_gpu/NOTES.md, "Launch options").
LAUNCH = dict(num_warps=2, num_stages=2)


def attend(layer, query: torch.Tensor, scale: float, decode_plan, out=None) -> torch.Tensor:
    values, value_args = _values(layer)
    store = [layer.k_codes, layer.k_scale, layer.k_zero, *values, layer.win_k, layer.win_v, *_sinks(layer)]
    return launch_attend(_channel_attend, layer, query, scale, decode_plan, out, store, **_geometry(layer),
                         **value_args, **LAUNCH)


def write(layer, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """One token per sequence into the window; a block that this token completes is quantized
    into the store in the same launch (an in-kernel branch on the device length)."""
    values, value_args = _values(layer)
    store = [layer.win_k, layer.win_v, layer.k_codes, layer.k_scale, layer.k_zero, *values, *_sinks(layer)]
    launch_write(_channel_write, layer, key_states, value_states, store, **_geometry(layer), **value_args)


def _sinks(layer) -> list:
    """The sink buffers; without sinks the window's stand in, never read (S = 0)."""
    return [layer.sink_k, layer.sink_v] if layer.fmt.sinks else [layer.win_k, layer.win_v]


def _geometry(layer) -> dict:
    f = layer.fmt
    return dict(G=f.group, R=f.residual, W=f.window, KBITS=f.key_bits, S=f.sinks, SP=max(f.sink_slots, 16))


@triton.jit
def _channel_attend(Q, KC, KS, KZ, VC, VS, VZ, WK, WV, SK, SV, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT,
                    NSPLIT, NPART, HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
                    G: tl.constexpr, R: tl.constexpr, W: tl.constexpr, KBITS: tl.constexpr, S: tl.constexpr,
                    SP: tl.constexpr, FP8: tl.constexpr, VBITS: tl.constexpr, VG: tl.constexpr, DOT: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, False)
    split = tl.program_id(1)
    stream = tl.maximum(n_tok - S, 0)  # tokens after the sinks: store rows, then the window
    stored = stored_len(n_tok, R, G, S)
    start = split * SPLIT
    if split == NSPLIT:
        window_partial(Q, WK, WV, PO, PM, PL, b, h, bh, stream, stored, sqb, sqh, qk_scale, bh * NPART + NSPLIT,
                       HKV, QH, M, D, W, G, DOT)
    elif split == NSPLIT + 1:  # only launched with sinks: positions [0, min(n, S)) in slots 0..S-1
        window_partial(Q, SK, SV, PO, PM, PL, b, h, bh, n_tok - stream, 0, sqb, sqh, qk_scale,
                       bh * NPART + NSPLIT + 1, HKV, QH, M, D, SP, SP, DOT)
    elif start < stored:
        # Codes stay in their packed order: part r of a byte row holds channels PER*j + r, so the
        # query, scales and accumulators are split the same way instead of interleaving the codes
        # of every block back into channel order (a register shuffle per element).
        q0, q1, q2, q3 = query_parts(Q, b, h, sqb, sqh, qk_scale, QH, M, D, 8 // KBITS)
        row0 = bh.to(tl.int64) * cap
        cbase = row0 * (D * KBITS // 8)
        sbase = bh.to(tl.int64) * (cap // G) * D
        if FP8:
            d = tl.arange(0, D)
            m_i, l_i, acc = softmax_state(M, D)
            for n0 in range(start, tl.minimum(start + SPLIT, stored), G):  # whole blocks: no masks
                scores = channel_key_scores(q0, q1, q2, q3, KC, KS, KZ, cbase, sbase, n0, G, D, KBITS, DOT)
                n = row0 + n0 + tl.arange(0, G)
                v = tl.load(VC + n[:, None] * D + d[None, :]).to(DOT)  # e4m3 is exact in 16 bits
                m_i, l_i, acc = attend_block(scores, v, tl.load(VS + n).to(tl.float32)[None, :], m_i, l_i, acc, DOT)
            store_partial(PO, PM, PL, bh * NPART + split, acc, m_i, l_i, d, QH, M, D)
        else:
            VPER: tl.constexpr = 8 // VBITS
            DV: tl.constexpr = D // VPER
            j = tl.arange(0, DV)
            m_i, l_i, a0 = softmax_state(M, DV)
            a1 = tl.zeros([M, DV], tl.float32)
            a2 = tl.zeros([M, DV], tl.float32)
            a3 = tl.zeros([M, DV], tl.float32)
            for n0 in range(start, tl.minimum(start + SPLIT, stored), G):
                scores = channel_key_scores(q0, q1, q2, q3, KC, KS, KZ, cbase, sbase, n0, G, D, KBITS, DOT)
                n = row0 + n0 + tl.arange(0, G)
                packed = tl.load(VC + n[:, None] * DV + j[None, :])
                # One scale and zero per (token, group) loaded, spread over the group's channels in
                # registers; part r's column j is channel VPER*j + r, in group j // (VG / VPER).
                grp = n[:, None] * (D // VG) + tl.arange(0, D // VG)[None, :]
                v_scale = group_columns(tl.load(VS + grp).to(tl.float32), G, DV, VG // VPER)
                v_zero = group_columns(tl.load(VZ + grp).to(tl.float32), G, DV, VG // VPER)
                m_i, l_i, p, alpha = softmax_step(scores, m_i, l_i)
                p = p.to(DOT)
                a0 = a0 * alpha[:, None] + tl.dot(p, value_part(packed, 0, v_scale, v_zero, VBITS, DOT))
                a1 = a1 * alpha[:, None] + tl.dot(p, value_part(packed, 1, v_scale, v_zero, VBITS, DOT))
                if VPER == 4:
                    a2 = a2 * alpha[:, None] + tl.dot(p, value_part(packed, 2, v_scale, v_zero, VBITS, DOT))
                    a3 = a3 * alpha[:, None] + tl.dot(p, value_part(packed, 3, v_scale, v_zero, VBITS, DOT))
            part = bh * NPART + split
            store_partial(PO, PM, PL, part, a0, m_i, l_i, j * VPER, QH, M, D)
            store_partial(PO, PM, PL, part, a1, m_i, l_i, j * VPER + 1, QH, M, D)
            if VPER == 4:
                store_partial(PO, PM, PL, part, a2, m_i, l_i, j * VPER + 2, QH, M, D)
                store_partial(PO, PM, PL, part, a3, m_i, l_i, j * VPER + 3, QH, M, D)


@triton.jit
def _channel_write(KN, VN, WK, WV, KC, KS, KZ, VC, VS, VZ, SK, SV, LENS, skb, skh, svb, svh, cap,
                   HKV: tl.constexpr, D: tl.constexpr, G: tl.constexpr, R: tl.constexpr, W: tl.constexpr,
                   KBITS: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, FP8: tl.constexpr, VBITS: tl.constexpr,
                   VG: tl.constexpr):
    b = tl.program_id(0)  # one program per sequence: it alone reads and advances LENS[b]
    n_tok = tl.load(LENS + b)
    m = n_tok - S  # the token's stream index (negative: it is a sink)
    if m < 0:
        for h in range(HKV):
            write_window_token(SK, SV, KN, VN, b, h, skb, skh, svb, svh, n_tok, (b * HKV + h).to(tl.int64) * SP * D, D)
        tl.store(LENS + b, n_tok + 1)
    elif m < cap:
        past = m + 1 - R  # stream tokens older than the residual once this one is in
        first = past - G  # the block this token completes starts here
        for h in range(HKV):
            bh = (b * HKV + h).to(tl.int64)
            wbase = bh * W * D
            k_new, v_new = write_window_token(WK, WV, KN, VN, b, h, skb, skh, svb, svh, m % W, wbase, D)
            if (past >= G) & (past % G == 0):
                keys = load_window_block(WK, wbase, first, m, k_new, W, G, D)
                quantize_key_block(keys, KC, KS, KZ, bh * cap * (D * KBITS // 8), bh * (cap // G) * D, first,
                                   G, D, KBITS)
                values = load_window_block(WV, wbase, first, m, v_new, W, G, D)
                rows = bh * cap + first + tl.arange(0, G)
                if FP8:  # one absmax scale per token, rounded up as optim.kv_quant.encode does
                    v_scale = tl.maximum(div_ieee(tl.max(tl.abs(values), axis=1), 448.0), 1e-7)
                    v_scale = (v_scale * 1.0009765625).to(tl.float16)
                    codes = fp8_e4m3_round(div_ieee(values, v_scale.to(tl.float32)[:, None]))
                    tl.store(VC + rows[:, None] * D + tl.arange(0, D)[None, :], codes.to(VC.dtype.element_ty))
                    tl.store(VS + rows, v_scale)
                else:  # asymmetric per token and group of VG channels
                    NG: tl.constexpr = D // VG
                    LEVELS: tl.constexpr = (1 << VBITS) - 1
                    grouped = tl.reshape(values, (G, NG, VG))
                    v_scale, v_zero = minmax_params(tl.min(grouped, axis=2), tl.max(grouped, axis=2), LEVELS)
                    codes = minmax_codes(grouped, v_scale[:, :, None], v_zero[:, :, None], LEVELS)
                    packed = pack_codes(tl.reshape(codes, (G, D)), G, D, VBITS)
                    tl.store(VC + rows[:, None] * (D * VBITS // 8) + tl.arange(0, D * VBITS // 8)[None, :], packed)
                    tl.store(VS + rows[:, None] * NG + tl.arange(0, NG)[None, :], v_scale)
                    tl.store(VZ + rows[:, None] * NG + tl.arange(0, NG)[None, :], v_zero)
        tl.store(LENS + b, n_tok + 1)


# ---- shared by both formats' kernels -------------------------------------------------------
@triton.jit
def window_partial(Q, WK, WV, PO, PM, PL, b, h, bh, n_tok, start, sqb, sqh, qk_scale, part,
                   HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
                   W: tl.constexpr, BW: tl.constexpr, DOT: tl.constexpr):
    """Attention over a 16-bit ring: indices [start, n_tok) live in slots index % W (the window;
    the sink buffer is the ring that never wraps: start 0, n_tok <= W).
    Softmax does not care about order, so every slot is scanned with a validity mask. An empty
    window writes a neutral partial (m = -inf, l = 0, acc = 0)."""
    d = tl.arange(0, D)
    q = load_query(Q, b, h, sqb, sqh, d, qk_scale, QH, M).to(DOT)
    base = bh.to(tl.int64) * W * D
    first = start % W
    m_i, l_i, acc = softmax_state(M, D)
    for w0 in range(0, W, BW):
        slot = w0 + tl.arange(0, BW)
        ok = (slot - first + W) % W < n_tok - start
        k = tl.load(WK + base + slot[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        v = tl.load(WV + base + slot[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        scores = tl.where(ok[None, :], tl.dot(q, tl.trans(k.to(DOT))), float("-inf"))
        m_i, l_i, acc = attend_block(scores, v.to(DOT), 1.0, m_i, l_i, acc, DOT)
    store_partial(PO, PM, PL, part, acc, m_i, l_i, d, QH, M, D)


@triton.jit
def write_window_token(WK, WV, KN, VN, b, h, skb, skh, svb, svh, slot, wbase, D: tl.constexpr):
    """Copy the new token of (b, h) into window slot `slot` (16 bits); returns it as float32."""
    d = tl.arange(0, D)
    k = tl.load(KN + b.to(tl.int64) * skb + h * skh + d).to(WK.dtype.element_ty)
    v = tl.load(VN + b.to(tl.int64) * svb + h * svh + d).to(WV.dtype.element_ty)
    tl.store(WK + wbase + slot * D + d, k)
    tl.store(WV + wbase + slot * D + d, v)
    return k.to(tl.float32), v.to(tl.float32)


@triton.jit
def load_window_block(WIN, wbase, first, n_tok, new, W: tl.constexpr, G: tl.constexpr, D: tl.constexpr):
    """float32 [G, D]: window stream indices [first, first + G); index n_tok (written by this very
    program, so not yet visible to its loads) comes from `new` instead of memory."""
    pos = first + tl.arange(0, G)
    d = tl.arange(0, D)
    x = tl.load(WIN + wbase + (pos % W)[:, None] * D + d[None, :]).to(tl.float32)
    return tl.where(pos[:, None] == n_tok, new[None, :], x)


@triton.jit
def quantize_key_block(x, KC, KS, KZ, cbase, sbase, first, G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Per-channel asymmetric codes of a block of G tokens, stored at rows [first, first + G)."""
    LEVELS: tl.constexpr = (1 << BITS) - 1
    DP: tl.constexpr = D * BITS // 8
    scale, zero = minmax_params(tl.min(x, axis=0), tl.max(x, axis=0), LEVELS)
    codes = minmax_codes(x, scale[None, :], zero[None, :], LEVELS)
    rows = first + tl.arange(0, G)
    tl.store(KC + cbase + rows[:, None] * DP + tl.arange(0, DP)[None, :], pack_codes(codes, G, D, BITS))
    d = tl.arange(0, D)
    tl.store(KS + sbase + (first // G) * D + d, scale)
    tl.store(KZ + sbase + (first // G) * D + d, zero)


@triton.jit
def codes_as(codes, DOT: tl.constexpr):
    """Non-negative integer codes (< 128) as DOT floats, exactly, without an int-to-float
    conversion: OR-ed into the mantissa of a power of two P whose mantissa step is 1, the bits read
    as P + code; subtracting P leaves the code. Integer OR and a float subtract are full-rate
    instructions, the conversion is not."""
    if DOT == tl.bfloat16:
        return (codes.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True) - 128.0  # 0x4300 = 2^7
    elif DOT == tl.float16:
        return (codes.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True) - 1024.0  # 0x6400 = 2^10
    else:
        return (codes.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # 2^23


@triton.jit
def code_part(packed, R: tl.constexpr, BITS: tl.constexpr):
    """Part R of packed codes (uint8 [rows, cols]): bits [R*BITS, (R+1)*BITS) of each byte, the
    codes of channels PER*col + R (`quantize.pack_codes` puts consecutive channels in one byte,
    lowest bits first)."""
    return (packed >> (R * BITS)) & ((1 << BITS) - 1)


@triton.jit
def value_part(packed, R: tl.constexpr, v_scale, v_zero, BITS: tl.constexpr, DOT: tl.constexpr):
    """Dequantized values [G, D/PER] of part R: code * scale + zero in float32, then DOT."""
    return (codes_as(code_part(packed, R, BITS), tl.float32) * v_scale + v_zero).to(DOT)


@triton.jit
def softmax_step(scores, m_i, l_i):
    """`common.attend_block` without the value product: the new max and sum, the probabilities and
    the factor that rescales the accumulators (here one per part of the channels)."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, axis=1), p, alpha


@triton.jit
def group_columns(x, ROWS: tl.constexpr, D: tl.constexpr, VG: tl.constexpr):
    """[ROWS, D/VG] per-group values -> [ROWS, D], each repeated over its group's VG columns."""
    NG: tl.constexpr = D // VG
    return tl.reshape(tl.broadcast_to(tl.reshape(x, (ROWS, NG, 1)), (ROWS, NG, VG)), (ROWS, D))


@triton.jit
def query_parts(Q, b, h, sqb, sqh, qk_scale, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
                PER: tl.constexpr):
    """The query rows split by channel residue: part r holds channels PER*j + r (parts past PER
    repeat the first ones and are never used)."""
    j = tl.arange(0, D // PER) * PER
    q0 = load_query(Q, b, h, sqb, sqh, j, qk_scale, QH, M)
    q1 = load_query(Q, b, h, sqb, sqh, j + 1, qk_scale, QH, M)
    if PER == 4:
        q2 = load_query(Q, b, h, sqb, sqh, j + 2, qk_scale, QH, M)
        q3 = load_query(Q, b, h, sqb, sqh, j + 3, qk_scale, QH, M)
    else:
        q2 = q0
        q3 = q1
    return q0, q1, q2, q3


@triton.jit
def key_part_scores(q, packed, KS, KZ, sb, chan, R: tl.constexpr, BITS: tl.constexpr, DOT: tl.constexpr):
    """Part R's share of the scores: (q * scale).code + q.zero over channels `chan`."""
    k_scale = tl.load(KS + sb + chan).to(tl.float32)
    k_zero = tl.load(KZ + sb + chan).to(tl.float32)
    k = codes_as(code_part(packed, R, BITS), DOT)
    return tl.dot((q * k_scale[None, :]).to(DOT), tl.trans(k)) + tl.sum(q * k_zero[None, :], axis=1)[:, None]


@triton.jit
def channel_key_scores(q0, q1, q2, q3, KC, KS, KZ, cbase, sbase, n0, G: tl.constexpr, D: tl.constexpr,
                       BITS: tl.constexpr, DOT: tl.constexpr):
    """Scores [M, G] of a block of G per-channel keys (k = code * scale + zero, one fp16 scale and
    zero per channel and block): q.k = (q * scale).code + q.zero, so scales are folded into the
    query once per block and the codes go into the dot exactly, one dot per part of the byte."""
    PER: tl.constexpr = 8 // BITS
    DP: tl.constexpr = D // PER
    j = tl.arange(0, DP) * PER
    sb = sbase + (n0 // G) * D
    packed = tl.load(KC + cbase + (n0 + tl.arange(0, G))[:, None] * DP + tl.arange(0, DP)[None, :])
    scores = key_part_scores(q0, packed, KS, KZ, sb, j, 0, BITS, DOT)
    scores += key_part_scores(q1, packed, KS, KZ, sb, j + 1, 1, BITS, DOT)
    if PER == 4:
        scores += key_part_scores(q2, packed, KS, KZ, sb, j + 2, 2, BITS, DOT)
        scores += key_part_scores(q3, packed, KS, KZ, sb, j + 3, 3, BITS, DOT)
    return scores
