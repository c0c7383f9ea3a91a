"""Pieces every storage format's kernels share: the split-K plan, the online-softmax step, partial
results and their reduction, the 16-bit window program and the exact-rounding helpers.

Split-K flash decoding. One query token per sequence. Program (b*HKV + h, split) reads tokens
[split*SPLIT, (split+1)*SPLIT) of KV head h of sequence b, for all QH = Hq/HKV query heads of that
KV head at once (rows of one [M, D] tile, M >= 16 for tl.dot), so K/V are read once for the group.
It writes an unnormalised partial (acc, running max m, running sum l); `_reduce` merges the
partials of each (b, h). The grid is sized for the store's *capacity*, fixed when a CUDA graph is
captured; the filled length is read from device memory, programs past it exit at once, and the
reduce reads only the partials of filled splits, so nothing past the length is ever touched.

Formats with a 16-bit window (per-channel keys: the tokens of the unfinished key block plus
`residual` recent ones) get one extra program per (b, h), partial index NSPLIT, for the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

HEAD_DIMS = (64, 128, 256)
QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
MAX_SPLITS = 128  # partials per (b, h) at most: bounds the scratch and the reduce loop


def interpreting() -> bool:
    """Whether these kernels run in Triton's CPU interpreter (CI): decided when `triton.jit`
    wrapped them (TRITON_INTERPRET=1 at import). The interpreter's tl.dot is wrong for bf16
    operands (Triton 3.9), so there every dot runs in float32."""
    return type(_reduce).__name__ == "InterpretedFunction"


def dot_dtype(store_dtype: torch.dtype):
    if interpreting():
        return tl.float32
    return tl.bfloat16 if store_dtype == torch.bfloat16 else tl.float16


@dataclass
class DecodePlan:
    """Launch geometry of one layer's decode attention, fixed for the store's capacity."""

    block: int  # tokens per inner step
    split: int  # tokens per split program
    nsplit: int  # split programs per (b, h) over the store
    npart: int  # partials per (b, h): nsplit, plus the window's
    rows: int  # M: query rows of a tile (QH padded to a power of two >= 16)
    qh: int  # query heads per KV head
    partial_out: torch.Tensor  # [B*HKV, npart, qh, D] float32
    partial_max: torch.Tensor  # [B*HKV, npart, qh] float32
    partial_sum: torch.Tensor


class Workspace:
    """Partial-result scratch shared by every layer of a cache (layers run one after another on one
    stream). Not a tensor attribute of any layer: it is kernel workspace, not KV storage."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, device) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.device != torch.device(device):
            buf = torch.empty(numel, dtype=torch.float32, device=device)
            self.buffers[name] = buf  # a plan built earlier keeps its own (smaller) buffer alive
        return buf[:numel]


def split_tokens(layer, block: int) -> int:
    """Tokens per split program, a multiple of `block`: at least 256 (each program amortizes its
    query load and partial write), and enough that at most MAX_SPLITS cover the capacity (scratch
    and reduce loop stay small). `layer.split_tokens` overrides it (tests: many splits, small stores)."""
    split = getattr(layer, "split_tokens", None) or max(256, triton.next_power_of_2(triton.cdiv(layer.capacity,
                                                                                                MAX_SPLITS)))
    return max(block, split // block * block)


def make_plan(layer, query: torch.Tensor, block: int, window: bool, workspace: Workspace | None) -> DecodePlan:
    """Validate the query against the layer's store and size the launch (ValueError on bad input)."""
    check_query(layer, query)
    b, hkv, d = layer.batch, layer.heads, layer.head_dim
    qh = query.shape[1] // hkv
    split = split_tokens(layer, block)
    nsplit = triton.cdiv(layer.capacity, split)
    npart = nsplit + int(window)
    ws = workspace or Workspace()
    n = b * hkv * npart * qh
    return DecodePlan(
        block=block, split=split, nsplit=nsplit, npart=npart, rows=max(16, triton.next_power_of_2(qh)), qh=qh,
        partial_out=ws.get("out", n * d, query.device).view(b * hkv, npart, qh, d),
        partial_max=ws.get("max", n, query.device).view(b * hkv, npart, qh),
        partial_sum=ws.get("sum", n, query.device).view(b * hkv, npart, qh),
    )


def check_query(layer, query: torch.Tensor) -> None:
    what = f"fused decode ({layer.fmt.name})"
    if not isinstance(query, torch.Tensor) or query.dim() != 4:
        raise ValueError(f"{what}: query must be a [batch, heads, 1, head_dim] tensor")
    b, hq, q_len, d = query.shape
    if q_len != 1:
        raise ValueError(f"{what}: one query token per sequence, got {q_len}")
    if query.dtype not in QUERY_DTYPES:
        raise ValueError(f"{what}: query dtype {query.dtype} is not float16, bfloat16 or float32")
    if query.device != layer.device:
        raise ValueError(f"{what}: query on {query.device}, store on {layer.device}")
    if d != layer.head_dim or b != layer.batch or hq % layer.heads:
        raise ValueError(f"{what}: query {tuple(query.shape)} does not fit the store "
                         f"(batch {layer.batch}, {layer.heads} KV heads, head_dim {layer.head_dim})")
    if query.stride(-1) != 1:
        raise ValueError(f"{what}: the query's head_dim must be contiguous (stride 1)")
    check_store(layer)


def check_store(layer) -> None:
    what = f"fused decode ({layer.fmt.name})"
    if layer.head_dim not in HEAD_DIMS:
        raise ValueError(f"{what}: head_dim {layer.head_dim} is not supported (one of {HEAD_DIMS})")
    for name, t in layer.store_tensors().items():
        if not t.is_contiguous():
            raise ValueError(f"{what}: store tensor {name} is not contiguous")
        if t.device != layer.device:
            raise ValueError(f"{what}: store tensor {name} is on {t.device}, not {layer.device}")
    if layer.lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{what}: lengths must be int32 or int64, got {layer.lengths.dtype}")


def output_for(query: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The [B, 1, Hq, D] result tensor in the query's dtype (transformers' attention layout)."""
    b, hq, _, d = query.shape
    if out is None:
        return torch.empty(b, 1, hq, d, dtype=query.dtype, device=query.device)
    if out.shape != (b, 1, hq, d) or out.dtype != query.dtype or out.device != query.device or out.stride(-1) != 1:
        raise ValueError(f"fused decode: out must be a {(b, 1, hq, d)} {query.dtype} tensor on {query.device}")
    return out


def launch_attend(kernel, layer, query: torch.Tensor, scale: float, plan: DecodePlan, out, store: list,
                  window: bool, **constexprs) -> torch.Tensor:
    """A format's split-K kernel over its `store` tensors, then the reduce. Every attend kernel takes
    (Q, *store, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT, NSPLIT, NPART) and the constexprs
    HKV, QH, M, D, DOT plus its own."""
    out = output_for(query, out)
    kernel[(layer.batch * layer.heads, plan.npart)](
        query, *store, layer.lengths, plan.partial_out, plan.partial_max, plan.partial_sum,
        query.stride(0), query.stride(1), layer.capacity, scale * LOG2E, plan.split, plan.nsplit, plan.npart,
        HKV=layer.heads, QH=plan.qh, M=plan.rows, D=layer.head_dim, DOT=dot_dtype(layer.store_dtype), **constexprs,
    )
    reduce_partials(layer, plan, out, window, layer.ring)
    return out


def launch_write(kernel, layer, key_states: torch.Tensor, value_states: torch.Tensor, store: list, **constexprs):
    """A format's write kernel, one program per sequence: (KN, VN, *store, LENS, strides, cap)."""
    kernel[(layer.batch,)](
        key_states, value_states, *store, layer.lengths, key_states.stride(0), key_states.stride(1),
        value_states.stride(0), value_states.stride(1), layer.capacity, HKV=layer.heads, D=layer.head_dim,
        **constexprs,
    )


def reduce_partials(layer, plan: DecodePlan, out: torch.Tensor, window: bool, ring: bool) -> None:
    """Merge the partials of each (b, h) into `out` [B, 1, Hq, D] (model dtype)."""
    _reduce[(layer.batch * layer.heads,)](
        plan.partial_out, plan.partial_max, plan.partial_sum, layer.lengths, out, out.stride(0), out.stride(2),
        layer.capacity, HKV=layer.heads, QH=plan.qh, QHP=triton.next_power_of_2(plan.qh), D=layer.head_dim,
        SPLIT=plan.split, NPART=plan.npart, R=layer.fmt.residual, G=layer.fmt.group, WINDOW=window, RING=ring,
    )


# ---- jit helpers ------------------------------------------------------------------------------
@triton.jit
def program_ids(LENS, cap, HKV: tl.constexpr, RING: tl.constexpr):
    """(b * HKV + h, b, h, tokens to attend) of a program: the length is read from device memory
    (a ring holds at most its capacity)."""
    bh = tl.program_id(0)
    n_tok = tl.load(LENS + bh // HKV).to(tl.int32)
    if RING:
        n_tok = tl.minimum(n_tok, cap)
    return bh, bh // HKV, bh % HKV, n_tok


@triton.jit
def softmax_state(M: tl.constexpr, D: tl.constexpr):
    """Empty online-softmax state: running max, running sum, unnormalised output."""
    return tl.full([M], float("-inf"), tl.float32), tl.zeros([M], tl.float32), tl.zeros([M, D], tl.float32)


@triton.jit
def stored_len(n, R: tl.constexpr, G: tl.constexpr):
    """Tokens in the quantized store when n are held: whole blocks of G, `R` kept back in 16 bits
    (the same rule as optim.kv_quant.BlockKVLayer, so it does not depend on how tokens arrived)."""
    return tl.maximum(n - R, 0) // G * G


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


@triton.jit
def load_query(Q, b, h, sqb, sqh, chan, qk_scale, QH: tl.constexpr, M: tl.constexpr):
    """[M, len(chan)] float32 query rows of KV head h (rows >= QH are zero), pre-scaled by
    softmax scale * log2(e) so the softmax can use exp2."""
    rows = tl.arange(0, M)
    ptr = Q + b.to(tl.int64) * sqb + (h * QH + rows[:, None]) * sqh + chan[None, :]
    return tl.load(ptr, mask=rows[:, None] < QH, other=0.0).to(tl.float32) * qk_scale


@triton.jit
def attend_block(scores, v, v_scale, m_i, l_i, acc, DOT: tl.constexpr):
    """One online-softmax step (base 2). `v_scale` (per key, or 1.0) multiplies the probabilities
    instead of the values, so per-token value scales cost one multiply per key, not per element."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot((p * v_scale).to(DOT), v)
    return m_new, l_i, acc


@triton.jit
def store_partial(PO, PM, PL, part, acc, m_i, l_i, chan, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr):
    """Partial `part` (= bh * NPART + index) of QH rows; `chan` maps acc columns to channels."""
    rows = tl.arange(0, M)
    ok = rows < QH
    base = part.to(tl.int64) * QH
    tl.store(PO + (base + rows[:, None]) * D + chan[None, :], acc, mask=ok[:, None])
    tl.store(PM + base + rows, m_i, mask=ok)
    tl.store(PL + base + rows, l_i, mask=ok)


@triton.jit
def window_partial(Q, WK, WV, PO, PM, PL, b, h, bh, n_tok, start, sqb, sqh, qk_scale, part,
                   HKV: tl.constexpr, QH: tl.constexpr, M: tl.constexpr, D: tl.constexpr,
                   W: tl.constexpr, BW: tl.constexpr, DOT: tl.constexpr):
    """Attention over the 16-bit window ring: positions [start, n_tok) live in slots pos % W.
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
    """float32 [G, D]: window positions [first, first + G); position n_tok (written by this very
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
def channel_phases(D: tl.constexpr, BITS: tl.constexpr):
    """Phase-major columns for codes packed 8/BITS per byte along head_dim: column k reads byte
    k % DP at bit offset (k // DP) * BITS, i.e. channel `chan[k]`. Loading each byte 8/BITS times
    (the repeats hit L1) unpacks a [rows, DP] tile into [rows, D] without reshapes; queries and
    scales are gathered in the same column order, so one dot covers all channels."""
    DP: tl.constexpr = D * BITS // 8
    k = tl.arange(0, D)
    phase = k // DP
    byte = k % DP
    return byte * (8 // BITS) + phase, byte, phase * BITS


@triton.jit
def channel_key_scores(q, KC, KS, KZ, cbase, sbase, n0, chan, byte, shift,
                       G: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr, DOT: tl.constexpr):
    """Scores [M, G] of a block of G per-channel keys (k = code * scale + zero, one fp16 scale and
    zero per channel and block): q.k = (q * scale).code + q.zero, so scales are folded into the
    query once per block and the codes go into the dot exactly."""
    DP: tl.constexpr = D * BITS // 8
    LEVELS: tl.constexpr = (1 << BITS) - 1
    blk = n0 // G
    k_scale = tl.load(KS + sbase + blk * D + chan).to(tl.float32)
    k_zero = tl.load(KZ + sbase + blk * D + chan).to(tl.float32)
    codes = tl.load(KC + cbase + (n0 + tl.arange(0, G))[:, None] * DP + byte[None, :]).to(tl.int32)
    k = ((codes >> shift[None, :]) & LEVELS).to(DOT)
    bias = tl.sum(q * k_zero[None, :], axis=1)
    return tl.dot((q * k_scale[None, :]).to(DOT), tl.trans(k)) + bias[:, None]


@triton.jit
def _reduce(PO, PM, PL, LENS, OUT, sob, soh, cap, HKV: tl.constexpr, QH: tl.constexpr, QHP: tl.constexpr,
            D: tl.constexpr, SPLIT, NPART, R: tl.constexpr, G: tl.constexpr,
            WINDOW: tl.constexpr, RING: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, RING)
    if WINDOW:
        filled = tl.cdiv(stored_len(n_tok, R, G), SPLIT)
        last = filled + 1  # the window's partial, at index NPART - 1
    else:
        filled = tl.cdiv(n_tok, SPLIT)
        last = filled
    rows = tl.arange(0, QHP)
    ok = rows < QH
    d = tl.arange(0, D)
    m_g = tl.full([QHP], float("-inf"), tl.float32)
    l_g = tl.zeros([QHP], tl.float32)
    acc = tl.zeros([QHP, D], tl.float32)
    for i in range(0, last):
        part = tl.where(i < filled, i, NPART - 1)
        base = (bh.to(tl.int64) * NPART + part) * QH
        m_s = tl.load(PM + base + rows, mask=ok, other=float("-inf"))
        l_s = tl.load(PL + base + rows, mask=ok, other=0.0)
        a_s = tl.load(PO + (base + rows[:, None]) * D + d[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m_g, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        w_old = tl.exp2(m_g - m_safe)
        w_new = tl.exp2(m_s - m_safe)
        l_g = l_g * w_old + l_s * w_new
        acc = acc * w_old[:, None] + a_s * w_new[:, None]
        m_g = m_new
    out = acc / tl.where(l_g == 0.0, 1.0, l_g)[:, None]  # length 0: zeros, not NaN
    ptr = OUT + b.to(tl.int64) * sob + (h * QH + rows[:, None]) * soh + d[None, :]
    tl.store(ptr, out.to(OUT.dtype.element_ty), mask=ok[:, None])
