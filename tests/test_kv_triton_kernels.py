"""Fused split-K decode kernels (optim/kernels) and quantize-on-write, against the torch path.

On CPU the kernels run in Triton's interpreter (tests/triton_interp.py); sizes are kept small.
`OLLM_TEST_DEVICE=cuda` runs the same checks compiled, on a GPU (README: GPU runs).
The reference is dequantize-then-attention: the store's own dequantized K/V (optim.kv_quant.decode
etc., float32) and softmax attention in float64, per sequence at its own length."""

from tests.triton_interp import relative_error  # noqa: I001  (sets up the interpreter first)

import dataclasses
import os

import pytest
import torch

from optim.kv_static import (INT8, PLAIN, StaticStoreCache, StaticStoreLayer, kivi_format, mixed_format,
                             reference_attention)

DEVICE = os.environ.get("OLLM_TEST_DEVICE", "cpu")
TOL = 1e-2  # bf16 output rounding alone is ~3e-3 relative
FORMATS = {
    "plain": PLAIN,
    "int8": INT8,
    "mixed": mixed_format(group=32, residual=0),
    "kivi": kivi_format(bits=2, group=32, value_group=32, residual=24),
    "kivi_r0": kivi_format(bits=2, group=16, value_group=16, residual=0),
    # Our kv_k4v4 / kv_k4v2 layouts (optim.kv_format, kernel=triton): one value group per head (64
    # channels) down to 2-bit values in groups of 32.
    "k4v4": kivi_format(bits=4, group=16, value_group=64, residual=8, value_bits=4),
    "k4v2": kivi_format(bits=4, group=32, value_group=32, residual=40, value_bits=2),
    # With sink tokens: the first S positions in a 16-bit buffer, the stream after them.
    "k4v4_sinks": kivi_format(bits=4, group=16, value_group=64, residual=8, value_bits=4, sinks=4),
    "mixed_sinks": mixed_format(group=32, residual=0, sinks=3),
}
# Per sequence, after one decode write: length 1 (written by the kernel alone), not a multiple of
# any block, an empty 16-bit window (residual 0, whole blocks), a full window (residual + G - 1).
LENGTHS = {
    "plain": [1, 63, 129, 200], "int8": [1, 63, 129, 200],
    "mixed": [1, 77, 96, 127], "kivi": [1, 88, 151, 37], "kivi_r0": [1, 96, 111, 53],
    "k4v4": [1, 40, 121, 23], "k4v2": [1, 70, 200, 150],
    # A sink written by the decode kernel (1, 4 = the last sink), the first stream token (5 / 4), a
    # block completed right after the sinks.
    "k4v4_sinks": [1, 4, 5, 44], "mixed_sinks": [2, 4, 99, 131],
}
# Every format meets every head_dim and GQA group size 1, 3 and 4+ (query heads per KV head).
SHAPES = [(64, 3, torch.bfloat16), (128, 4, torch.bfloat16), (256, 1, torch.float16)]
SHAPES_ALT = [(64, 1, torch.float16), (128, 3, torch.bfloat16), (256, 8, torch.bfloat16)]


def cases():
    for i, name in enumerate(FORMATS):
        for j, (head_dim, qh, dtype) in enumerate(SHAPES if i % 2 == 0 else SHAPES_ALT):
            yield pytest.param(name, head_dim, qh, dtype, j == 0, id=f"{name}-d{head_dim}-gqa{qh}-{str(dtype)[6:]}")


def make_layer(fmt, batch=4, heads=2, head_dim=64, dtype=torch.bfloat16, capacity=256, window=None):
    layer = StaticStoreLayer(fmt, sliding_window=window, capacity_step=64, split_tokens=64)
    layer.allocate(batch, heads, head_dim, dtype, DEVICE, capacity)
    return layer


def filled_layer(fmt, lengths, seed=0, **kw):
    """Prefill each sequence to length - 1 (torch path), then one decode write (Triton)."""
    layer = make_layer(fmt, batch=len(lengths), **kw)
    gen = torch.Generator().manual_seed(seed)
    shape = (layer.batch, layer.heads, max(lengths), layer.head_dim)
    k = (torch.randn(shape, generator=gen) * 2 + torch.linspace(-2, 2, layer.head_dim)).to(layer.store_dtype)
    v = torch.randn(shape, generator=gen).to(layer.store_dtype)
    layer.append(k.to(DEVICE), v.to(DEVICE), counts=[n - 1 for n in lengths])
    write(layer, gen)
    return layer, gen


def write(layer, gen):
    k = torch.randn(layer.batch, layer.heads, 1, layer.head_dim, generator=gen).to(DEVICE, layer.dtype)
    handle, _ = layer.update(k, torch.randn(k.shape, generator=gen).to(DEVICE, layer.dtype))
    return handle


def poison(layer):
    """NaN (or junk codes next to NaN scales) wherever the kernels must not read: past each
    sequence's filled part, and window slots that hold no live position."""
    f = layer.fmt
    for b, n in enumerate(layer.host_lengths):
        stored = min(n, layer.capacity) if layer.ring else f.stored_len(n)
        for name, t in layer.store_tensors().items():
            if name.startswith("sink_"):
                t[b, :, min(n, f.sinks) :] = float("nan")
                continue
            if name.startswith("win_"):
                live = {i % f.window for i in range(stored, f.stream_len(n))}
                t[b, :, [j for j in range(f.window) if j not in live]] = float("nan")
                continue
            rows = stored // f.group if f.has_window and name in ("k_scale", "k_zero") else stored
            if t.dtype == torch.float8_e4m3fn:
                t.view(torch.uint8)[b, :, rows:] = 0x7F  # e4m3fn NaN
            elif t.is_floating_point():
                t[b, :, rows:] = float("nan")
            else:
                t[b, :, rows:] = 3


def fused(layer, query, scale):
    """Attention with NaN-poisoned store tail, partial scratch and output: every output element
    must be written, from filled data only."""
    poison(layer)
    layer._plan = plan = layer.kernels.plan(layer, query, layer.workspace)
    for t in (plan.partial_out, plan.partial_max, plan.partial_sum):
        t.fill_(float("nan"))
    out = torch.full((query.shape[0], 1, query.shape[1], query.shape[3]), float("nan"), dtype=query.dtype,
                     device=query.device)
    got = layer.attend(query, scale, out=out)
    assert got is out and torch.isfinite(out).all(), "an output element was not written (or read poison)"
    return out


@pytest.mark.parametrize("name, head_dim, qh, dtype, next_step", list(cases()))
def test_fused_attention_matches_dequantize_then_attention(name, head_dim, qh, dtype, next_step):
    layer, gen = filled_layer(FORMATS[name], LENGTHS[name], head_dim=head_dim, dtype=dtype)
    scale = 0.7 * head_dim**-0.5  # not the default: a model's own scale (Gemma: query_pre_attn_scalar) is used
    query = torch.randn(layer.batch, layer.heads * qh, 1, head_dim, generator=gen).to(DEVICE, dtype)
    assert relative_error(fused(layer, query, scale), reference_attention(layer, query, scale)) < TOL
    if not next_step:
        return
    # One more token: the same plan (grid sized for the capacity) reads the new device lengths.
    plan = layer._plan
    write(layer, gen)
    assert layer.lengths.tolist() == [n + 1 for n in LENGTHS[name]]
    out = layer.attend(query, scale)
    assert layer._plan is plan and relative_error(out, reference_attention(layer, query, scale)) < TOL


def test_sliding_ring_wraps():
    layer, gen = filled_layer(PLAIN, [1, 50], window=64, head_dim=64)
    for _ in range(20):  # the second sequence wraps its 64-slot ring
        write(layer, gen)
    assert layer.host_lengths == [21, 70] and layer.capacity == 64
    query = torch.randn(2, 4, 1, 64, generator=gen).to(DEVICE, torch.bfloat16)
    assert relative_error(fused(layer, query, 0.125), reference_attention(layer, query, 0.125)) < TOL


def test_a_store_with_sinks_grows_past_its_capacity():
    """Sinks sit outside the store's capacity (stream tokens): growing by eager appends and by
    decode writes across the capacity boundary keeps every token."""
    layer = StaticStoreLayer(FORMATS["k4v4_sinks"], capacity_step=64, split_tokens=64)
    layer.allocate(2, 2, 64, torch.bfloat16, DEVICE, 64)
    assert layer.capacity == 64
    gen = torch.Generator().manual_seed(3)
    k = torch.randn(2, 2, 66, 64, generator=gen).to(DEVICE, torch.bfloat16)
    layer.append(k, k.clone())  # 62 stream tokens: fits
    for _ in range(5):  # stream tokens 62..66: the third decode write needs a 65th row
        write(layer, gen)
    assert layer.lengths.tolist() == [71, 71] == layer.host_lengths and layer.capacity == 128
    query = torch.randn(2, 4, 1, 64, generator=gen).to(DEVICE, torch.bfloat16)
    assert relative_error(fused(layer, query, 0.125), reference_attention(layer, query, 0.125)) < TOL


def test_fp32_query_and_many_splits():
    layer, gen = filled_layer(FORMATS["mixed"], [250, 3], head_dim=128, dtype=torch.float32)
    query = torch.randn(2, 4, 1, 128, generator=gen).to(DEVICE)
    out = fused(layer, query, 128**-0.5)
    assert out.dtype == torch.float32 and relative_error(out, reference_attention(layer, query, 128**-0.5)) < TOL


@pytest.mark.parametrize("name", ["plain", "int8", "mixed", "kivi", "kivi4", "k4v2", "k4v4_sinks", "mixed_sinks"])
def test_quantize_on_write_equals_encode(name):
    """Tokens written one at a time by the Triton kernel give the codes, scales and zeros that
    optim.kv_quant.encode / kv_int8.quantize_int8_per_token give when appended at once."""
    fmt = kivi_format(bits=4, group=16, value_group=32, residual=5) if name == "kivi4" else FORMATS[name]
    fp32 = ("mixed", "kivi4", "k4v2", "mixed_sinks")  # fp32 models: 16-bit rounding first
    dtype = torch.float32 if name in fp32 else torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    k = (torch.randn(2, 2, 83, 64, generator=gen) * 3).to(DEVICE, dtype)
    v = torch.randn(2, 2, 83, 64, generator=gen).to(DEVICE, dtype)
    at_once, stepped = make_layer(fmt, 2, dtype=dtype), make_layer(fmt, 2, dtype=dtype)
    at_once.append(k, v)
    stepped.append(k[:, :, :11], v[:, :, :11])  # a prefill that ends inside a block
    for i in range(11, 83):
        stepped.update(k[:, :, i : i + 1], v[:, :, i : i + 1])
    assert stepped.lengths.tolist() == [83, 83] == stepped.host_lengths
    live = torch.arange(fmt.stored_len(83), fmt.stream_len(83)) % max(fmt.window, 1)
    for name_, a in at_once.store_tensors().items():
        b = getattr(stepped, name_)
        if name_.startswith("win_"):
            a, b = a[:, :, live], b[:, :, live]
        if a.dtype == torch.float8_e4m3fn:
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        assert torch.equal(a, b), f"{name_} differs"


def test_our_layouts_get_the_fused_store_or_a_clear_refusal():
    """kv_k4v4 / kv_k4v2 / kv_mixed-like FormatKV layouts map onto the store the kernels read, their
    sinks included; what it cannot hold (pre-RoPE keys, per-token keys) is refused when the method
    is built."""
    from transformers import LlamaConfig

    from optim.kv_format import FormatKV
    from ollm_bench.methods import build_method

    k4v4 = build_method("kv_k4v4", kernel="triton")
    assert k4v4.store_format() == kivi_format(bits=4, group=64, value_group=64, residual=128, value_bits=4, sinks=4)
    assert build_method("kv_k4v2", sinks=0, kernel="triton").store_format().value_bits == 2
    fp8_values = FormatKV(value=["fp8"], sinks=0, residual=0, kernel="triton", allow_reversed=True)  # kv_mixed's layout
    assert fp8_values.store_format() == mixed_format(64, 0)
    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    cache = k4v4.make_cache(config)
    assert isinstance(cache, StaticStoreCache) and cache.layers[0].fmt.value_bits == 4
    for bad, match in [(dict(sinks=0, key_pre_rope=True), "after RoPE"),
                       (dict(sinks=0, key=["token", 8, 64], value=["token", 4, 64]), "no fused store")]:
        with pytest.raises(ValueError, match=match):
            FormatKV(kernel="triton", **bad)


def test_bad_input_is_a_clear_error():
    from transformers import LlamaConfig

    def config(head_dim):
        return LlamaConfig(vocab_size=64, hidden_size=4 * head_dim, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim)

    with pytest.raises(ValueError, match="head_dim 96 is not supported"):
        StaticStoreCache(config(96), PLAIN)
    with pytest.raises(ValueError, match="group size must be a power of two"):
        StaticStoreCache(config(64), mixed_format(group=8))
    with pytest.raises(ValueError, match="value group"):
        StaticStoreCache(config(64), kivi_format(value_group=48))
    with pytest.raises(ValueError, match="per-channel formats only"):
        StaticStoreCache(config(64), dataclasses.replace(INT8, sinks=4))
    layer, gen = filled_layer(FORMATS["mixed"], [5, 9])
    q = torch.randn(2, 4, 1, 64).to(DEVICE, torch.bfloat16)
    for bad, match in [(torch.randn(2, 4, 2, 64, device=DEVICE), "one query token"), (q.int(), "dtype"),
                       (q[:1], "does not fit"), (q.to("meta"), "store on"),
                       (torch.randn(2, 4, 1, 128, device=DEVICE)[..., ::2], "contiguous")]:
        with pytest.raises(ValueError, match=match):
            layer.attend(bad)
    layer.k_codes = layer.k_codes.transpose(0, 1)
    with pytest.raises(ValueError, match="k_codes is not contiguous"):
        layer.attend(q)
