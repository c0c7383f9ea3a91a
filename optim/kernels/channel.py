"""Per-channel keys behind a 16-bit window: the kernels of kv_mixed and KIVI (the peer), which
store keys alike and differ in their values.

Store, per layer (capacity C tokens, a multiple of G):
- `k_codes` uint8 [B, HKV, C, D*KBITS/8]: KBITS-bit codes packed along head_dim (kv_quant.pack),
  `k_scale`/`k_zero` fp16 [B, HKV, C/G, D]: per channel and block of G tokens;
- values, kv_mixed (`fp8=True`): `v_codes` float8_e4m3fn [B, HKV, C, D], `v_scale` fp16 [B, HKV, C];
  KIVI: `v_codes` uint8 [B, HKV, C, D*VBITS/8], `v_scale`/`v_zero` fp16 [B, HKV, C, D/VG], VBITS
  per token in groups of VG channels;
- `win_k`/`win_v` 16-bit [B, HKV, W, D]: the tokens not yet in a whole block (plus `residual`
  recent ones), position p in slot p % W.
fp8 values go into the dot as they are (exact in 16 bits) and their per-token scale multiplies the
probabilities; KIVI's value scales vary along head_dim, so those are dequantized in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (attend_block, channel_key_scores, channel_phases, div_ieee, fp8_e4m3_round, launch_attend,
                     launch_write, load_query, load_window_block, make_plan, minmax_codes, minmax_params, pack_codes,
                     program_ids, quantize_key_block, softmax_state, store_partial, stored_len, window_partial,
                     write_window_token)


def _values(layer) -> tuple[list, dict]:
    """Value tensors (fp8 has no zeros: its scales stand in, unread) and their constexprs."""
    f, fp8 = layer.fmt, layer.fmt.name == "mixed"
    tensors = [layer.v_codes, layer.v_scale, layer.v_scale if fp8 else layer.v_zero]
    return tensors, dict(FP8=fp8, VBITS=8 if fp8 else f.value_bits, VG=layer.head_dim if fp8 else f.value_group)


def plan(layer, query, workspace=None):
    return make_plan(layer, query, layer.fmt.group, window=True, workspace=workspace)


def attend(layer, query: torch.Tensor, scale: float, decode_plan, out=None) -> torch.Tensor:
    values, value_args = _values(layer)
    store = [layer.k_codes, layer.k_scale, layer.k_zero, *values, layer.win_k, layer.win_v]
    return launch_attend(_channel_attend, layer, query, scale, decode_plan, out, store, window=True,
                         **_geometry(layer), **value_args)


def write(layer, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """One token per sequence into the window; a block that this token completes is quantized
    into the store in the same launch (an in-kernel branch on the device length)."""
    values, value_args = _values(layer)
    store = [layer.win_k, layer.win_v, layer.k_codes, layer.k_scale, layer.k_zero, *values]
    launch_write(_channel_write, layer, key_states, value_states, store, **_geometry(layer), **value_args)


def _geometry(layer) -> dict:
    f = layer.fmt
    return dict(G=f.group, R=f.residual, W=f.window, KBITS=f.key_bits)


@triton.jit
def _channel_attend(Q, KC, KS, KZ, VC, VS, VZ, WK, WV, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT, NSPLIT,
                    NPART, HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
                    R: tl.constexpr, W: tl.constexpr, KBITS: tl.constexpr, FP8: tl.constexpr, VBITS: tl.constexpr,
                    VG: tl.constexpr, DOT: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, False)
    split = tl.program_id(1)
    stored = stored_len(n_tok, R, G)
    start = split * SPLIT
    if split == NSPLIT:
        window_partial(Q, WK, WV, PO, PM, PL, b, h, bh, n_tok, stored, sqb, sqh, qk_scale, bh * NPART + NSPLIT,
                       HKV, QH, M, D, W, G, DOT)
    elif start < stored:
        chan, byte, shift = channel_phases(D, KBITS)
        v_chan, v_byte, v_shift = channel_phases(D, VBITS)  # VBITS 8 (fp8): natural order
        q = load_query(Q, b, h, sqb, sqh, chan, qk_scale, QH, M)
        row0 = bh.to(tl.int64) * cap
        cbase = row0 * (D * KBITS // 8)
        sbase = bh.to(tl.int64) * (cap // G) * D
        m_i, l_i, acc = softmax_state(M, D)
        for n0 in range(start, tl.minimum(start + SPLIT, stored), G):  # whole blocks: no masks
            scores = channel_key_scores(q, KC, KS, KZ, cbase, sbase, n0, chan, byte, shift, G, D, KBITS, DOT)
            n = row0 + n0 + tl.arange(0, G)
            if FP8:
                v = tl.load(VC + n[:, None] * D + v_chan[None, :]).to(DOT)  # e4m3 is exact in 16 bits
                m_i, l_i, acc = attend_block(scores, v, tl.load(VS + n).to(tl.float32)[None, :], m_i, l_i, acc, DOT)
            else:
                codes = tl.load(VC + n[:, None] * (D * VBITS // 8) + v_byte[None, :]).to(tl.int32)
                v_scale = tl.load(VS + n[:, None] * (D // VG) + (v_chan // VG)[None, :]).to(tl.float32)
                v_zero = tl.load(VZ + n[:, None] * (D // VG) + (v_chan // VG)[None, :]).to(tl.float32)
                v = ((codes >> v_shift[None, :]) & ((1 << VBITS) - 1)).to(tl.float32) * v_scale + v_zero
                m_i, l_i, acc = attend_block(scores, v.to(DOT), 1.0, m_i, l_i, acc, DOT)
        store_partial(PO, PM, PL, bh * NPART + split, acc, m_i, l_i, v_chan, QH, M, D)


@triton.jit
def _channel_write(KN, VN, WK, WV, KC, KS, KZ, VC, VS, VZ, LENS, skb, skh, svb, svh, cap,
                   HKV: tl.constexpr, D: tl.constexpr, G: tl.constexpr, R: tl.constexpr, W: tl.constexpr,
                   KBITS: tl.constexpr, FP8: tl.constexpr, VBITS: tl.constexpr, VG: tl.constexpr):
    b = tl.program_id(0)  # one program per sequence: it alone reads and advances LENS[b]
    n_tok = tl.load(LENS + b)
    if n_tok < cap:
        past = n_tok + 1 - R  # tokens older than the residual once this one is in
        first = past - G  # the block this token completes starts here
        for h in range(HKV):
            bh = (b * HKV + h).to(tl.int64)
            wbase = bh * W * D
            k_new, v_new = write_window_token(WK, WV, KN, VN, b, h, skb, skh, svb, svh, n_tok % W, wbase, D)
            if (past >= G) & (past % G == 0):
                keys = load_window_block(WK, wbase, first, n_tok, k_new, W, G, D)
                quantize_key_block(keys, KC, KS, KZ, bh * cap * (D * KBITS // 8), bh * (cap // G) * D, first,
                                   G, D, KBITS)
                values = load_window_block(WV, wbase, first, n_tok, v_new, W, G, D)
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
