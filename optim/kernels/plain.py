"""16-bit K/V (the baseline), global or a sliding-window ring: the split-K kernel over a plain
static store, so the baseline can be timed in the same graph-captured decode as the compressed
formats. Store: `keys`/`values` [B, HKV, capacity, D] in the model's 16-bit dtype.

A ring (sliding layer) holds `capacity = window` slots, token at position p in slot p % window:
after the write of position p the slots hold exactly the positions (p - window, p] that
transformers' sliding mask lets p see, and attention order does not matter, so the kernel reads
min(length, capacity) slots as if they were a plain store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (attend_block, launch_attend, launch_write, load_query, make_plan, program_ids, softmax_state,
                     store_partial)


def block_tokens(layer) -> int:
    return 64 if layer.head_dim <= 128 else 32  # a [BLOCK, D] 16-bit tile of K and of V in registers


def plan(layer, query, workspace=None):
    return make_plan(layer, query, block_tokens(layer), window=False, workspace=workspace)


# Two pipeline stages instead of Triton's three: on an H200 (one layer, Llama-3.1-8B shapes, bf16)
# 158 -> 138 us at 128k x 1, no change at 32k x 8 (272 us, already at ~80 % of the copy bandwidth).
# Measured beside the compressed kernels' own launch options, so the baseline is tuned as they are.
LAUNCH = dict(num_stages=2)


def attend(layer, query: torch.Tensor, scale: float, decode_plan, out=None) -> torch.Tensor:
    return launch_attend(_plain_attend, layer, query, scale, decode_plan, out, [layer.keys, layer.values],
                         BLOCK=decode_plan.block, RING=layer.ring, **LAUNCH)


def write(layer, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """Append one token per sequence at its device length (slot length % capacity on a ring) and
    advance the length; a full global store is left untouched (the host refuses that step first)."""
    launch_write(_plain_write, layer, key_states, value_states, [layer.keys, layer.values], RING=layer.ring)


@triton.jit
def _plain_attend(Q, K, V, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT, NSPLIT, NPART,
                  HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
                  RING: tl.constexpr, DOT: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, RING)
    split = tl.program_id(1)
    start = split * SPLIT
    if start < n_tok:
        d = tl.arange(0, D)
        q = load_query(Q, b, h, sqb, sqh, d, qk_scale, QH, M).to(DOT)
        base = bh.to(tl.int64) * cap * D
        m_i, l_i, acc = softmax_state(M, D)
        end = tl.minimum(start + SPLIT, n_tok)
        for n0 in range(start, end, BLOCK):
            n = n0 + tl.arange(0, BLOCK)
            ok = n < end
            k = tl.load(K + base + n[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(V + base + n[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
            scores = tl.where(ok[None, :], tl.dot(q, tl.trans(k.to(DOT))), float("-inf"))
            m_i, l_i, acc = attend_block(scores, v.to(DOT), 1.0, m_i, l_i, acc, DOT)
        store_partial(PO, PM, PL, bh * NPART + split, acc, m_i, l_i, d, QH, M, D)


@triton.jit
def _plain_write(KN, VN, K, V, LENS, skb, skh, svb, svh, cap, HKV: tl.constexpr, D: tl.constexpr, RING: tl.constexpr):
    b = tl.program_id(0)  # one program per sequence: it alone reads and advances LENS[b]
    n_tok = tl.load(LENS + b)
    if RING:
        slot = n_tok % cap
        room = n_tok >= 0
    else:
        slot = n_tok
        room = n_tok < cap
    if room:
        d = tl.arange(0, D)
        for h in range(HKV):
            row = ((b * HKV + h).to(tl.int64) * cap + slot) * D
            k = tl.load(KN + b.to(tl.int64) * skb + h * skh + d)
            v = tl.load(VN + b.to(tl.int64) * svb + h * svh + d)
            tl.store(K + row + d, k.to(K.dtype.element_ty))
            tl.store(V + row + d, v.to(V.dtype.element_ty))
        tl.store(LENS + b, n_tok + 1)
