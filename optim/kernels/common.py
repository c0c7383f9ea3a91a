"""Pieces every storage format's kernels share: the split-K plan and its checks, the launches, the
online-softmax step, partial results and their reduction.

Split-K flash decoding. One query token per sequence. Program (b*HKV + h, split) reads tokens
[split*SPLIT, (split+1)*SPLIT) of KV head h of sequence b, for all QH = Hq/HKV query heads of that
KV head at once (rows of one [M, D] tile, M >= 16 for tl.dot), so K/V are read once for the group.
It writes an unnormalised partial (acc, running max m, running sum l); `_reduce` merges the
partials of each (b, h). The grid is sized for the store's *capacity*, fixed when a CUDA graph is
captured; the filled length is read from device memory, programs past it exit at once, and the
reduce reads only the partials of filled splits, so nothing past the length is ever touched.

Formats with a 16-bit window (per-channel keys: the tokens of the unfinished key block plus
`residual` recent ones) get one extra program per (b, h), partial index NSPLIT, for the window,
and with sink tokens one more, NSPLIT + 1, for the sinks (optim/kernels/channel.py). Their split
programs cover the stream (the tokens after the sinks) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..kv_store_format import HEAD_DIMS

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
    npart: int  # partials per (b, h): nsplit, plus the window's and the sinks'
    extra: int  # partials after the splits: 0, 1 (window) or 2 (window, sinks)
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
    extra = int(window) + int(window and layer.fmt.sinks > 0)
    npart = nsplit + extra
    ws = workspace or Workspace()
    n = b * hkv * npart * qh
    return DecodePlan(
        block=block, split=split, nsplit=nsplit, npart=npart, extra=extra, rows=max(16, triton.next_power_of_2(qh)),
        qh=qh,
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
                  **constexprs) -> torch.Tensor:
    """A format's split-K kernel over its `store` tensors, then the reduce. Every attend kernel takes
    (Q, *store, LENS, PO, PM, PL, sqb, sqh, cap, qk_scale, SPLIT, NSPLIT, NPART) and the constexprs
    HKV, QH, M, D, DOT plus its own."""
    out = output_for(query, out)
    kernel[(layer.batch * layer.heads, plan.npart)](
        query, *store, layer.lengths, plan.partial_out, plan.partial_max, plan.partial_sum,
        query.stride(0), query.stride(1), layer.capacity, scale * LOG2E, plan.split, plan.nsplit, plan.npart,
        HKV=layer.heads, QH=plan.qh, M=plan.rows, D=layer.head_dim, DOT=dot_dtype(layer.store_dtype), **constexprs,
    )
    reduce_partials(layer, plan, out, layer.ring)
    return out


def launch_write(kernel, layer, key_states: torch.Tensor, value_states: torch.Tensor, store: list, **constexprs):
    """A format's write kernel, one program per sequence: (KN, VN, *store, LENS, strides, cap)."""
    # No fused multiply-add: the scale/zero arithmetic rounds each operation, as torch's does, so
    # the codes equal optim.kv_quant.encode's bit for bit (tests/test_kv_triton_kernels.py).
    kernel[(layer.batch,)](
        key_states, value_states, *store, layer.lengths, key_states.stride(0), key_states.stride(1),
        value_states.stride(0), value_states.stride(1), layer.capacity, HKV=layer.heads, D=layer.head_dim,
        enable_fp_fusion=False, **constexprs,
    )


def reduce_partials(layer, plan: DecodePlan, out: torch.Tensor, ring: bool) -> None:
    """Merge the partials of each (b, h) into `out` [B, 1, Hq, D] (model dtype)."""
    _reduce[(layer.batch * layer.heads,)](
        plan.partial_out, plan.partial_max, plan.partial_sum, layer.lengths, out, out.stride(0), out.stride(2),
        layer.capacity, HKV=layer.heads, QH=plan.qh, QHP=triton.next_power_of_2(plan.qh), D=layer.head_dim,
        SPLIT=plan.split, NPART=plan.npart, R=layer.fmt.residual, G=layer.fmt.group, S=layer.fmt.sinks,
        EXTRA=plan.extra, RING=ring,
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
def stored_len(n, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr):
    """Tokens in the quantized store when n are held: the `S` sinks aside, whole blocks of G, `R`
    kept back in 16 bits (the same rule as optim.kv_quant.BlockKVLayer, so it does not depend on
    how tokens arrived)."""
    return tl.maximum(n - S - R, 0) // G * G


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
def _reduce(PO, PM, PL, LENS, OUT, sob, soh, cap, HKV: tl.constexpr, QH: tl.constexpr, QHP: tl.constexpr,
            D: tl.constexpr, SPLIT, NPART, R: tl.constexpr, G: tl.constexpr, S: tl.constexpr,
            EXTRA: tl.constexpr, RING: tl.constexpr):
    bh, b, h, n_tok = program_ids(LENS, cap, HKV, RING)
    if EXTRA > 0:
        filled = tl.cdiv(stored_len(n_tok, R, G, S), SPLIT)
    else:
        filled = tl.cdiv(n_tok, SPLIT)
    last = filled + EXTRA  # the window's (and the sinks') partials sit at the end: NPART - EXTRA, ...
    rows = tl.arange(0, QHP)
    ok = rows < QH
    d = tl.arange(0, D)
    m_g = tl.full([QHP], float("-inf"), tl.float32)
    l_g = tl.zeros([QHP], tl.float32)
    acc = tl.zeros([QHP, D], tl.float32)
    for i in range(0, last):
        part = tl.where(i < filled, i, NPART - EXTRA + i - filled)
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
