"""Codecs shared by the KV-compression family: packing, error bounds, stored dtypes and sizes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optim.kv_quant import FP8, decode, encode, pack, unpack

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(bits=st.sampled_from([2, 4, 8]), rows=st.integers(0, 5), width=st.sampled_from([4, 8, 32]))
def test_pack_roundtrip(bits, rows, width):
    codes = torch.randint(0, 1 << bits, (rows, width), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, width * bits // 8)
    assert torch.equal(unpack(packed, bits), codes)


def _structured(b=2, h=2, t=64, d=32, seed=0):
    """Keys with a few large outlier channels (what real keys look like) on top of noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, d, generator=g)
    x[..., :3] *= 20.0
    x[..., 5] += 50.0
    return x


@pytest.mark.parametrize("data", ["random", "structured"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_channel_error_within_half_step(data, bits):
    x = torch.randn(2, 2, 64, 32) if data == "random" else _structured()
    enc = encode(x, ("channel", bits, 16))
    xq = decode(enc, ("channel", bits, 16), torch.float32)
    blocks = x.reshape(2, 2, 4, 16, 32)
    step = (blocks.amax(3) - blocks.amin(3)) / ((1 << bits) - 1)  # per block and channel
    bound = 0.5 * step * (1 + 2**-8) + blocks.amin(3).abs() * 2**-10 + 1e-6
    err = (xq - x).abs().reshape(2, 2, 4, 16, 32).amax(3)
    assert (err <= bound).all()
    assert enc["codes"].dtype == torch.uint8 and enc["codes"].shape[-1] == 32 * bits // 8
    assert enc["scale"].dtype == enc["zero"].dtype == torch.float16 and enc["scale"].shape == (2, 2, 4, 32)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_token_groups_error_within_half_step(bits):
    x = _structured()
    xq = decode(encode(x, ("token", bits, 8)), ("token", bits, 8), torch.float32)
    groups = x.reshape(2, 2, 64, 4, 8)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / ((1 << bits) - 1)
    bound = 0.5 * step * (1 + 2**-8) + groups.amin(-1, keepdim=True).abs() * 2**-10 + 1e-6
    assert ((xq - x).abs().reshape(2, 2, 64, 4, 8) <= bound).all()


def test_fp8_relative_error_and_one_byte():
    x = _structured()
    enc = encode(x, ("fp8",))
    assert enc["codes"].dtype == FP8 and enc["codes"].element_size() == 1
    xq = decode(enc, ("fp8",), torch.float32)
    scale = enc["scale"].float()
    assert ((xq - x).abs() <= x.abs() / 16 + scale * 2**-9).all()  # e4m3: 3 mantissa bits, subnormals 2^-9


def test_channel_quantization_beats_token_quantization_on_outlier_keys():
    """Why keys are quantized per channel: outlier channels would flatten a per-token scale."""
    x = _structured()
    per_channel = (decode(encode(x, ("channel", 4, 16)), ("channel", 4, 16), torch.float32) - x).norm()
    per_token = (decode(encode(x, ("token", 4, 32)), ("token", 4, 32), torch.float32) - x).norm()
    assert per_channel < 0.5 * per_token


def test_constant_input_is_exact_enough():
    x = torch.full((1, 1, 16, 8), 3.0)
    xq = decode(encode(x, ("channel", 2, 16)), ("channel", 2, 16), torch.float32)
    assert (xq - x).abs().max() < 3.0 * 2**-9


def test_value_checks_run_per_prefill_chunk_not_per_decode_step(monkeypatch):
    """NaN/Inf checks sync with the device: chunks of more than one token are checked, one-token
    decode updates only with OLLM_KV_CHECK_EVERY_STEP (kv_quant.CHECK_EVERY_STEP)."""
    from optim import kv_quant
    from optim.kv_int8 import Int8KVLayer
    from optim.kv_mixed import MixedPrecisionKVLayer

    for layer in (MixedPrecisionKVLayer(group_size=4), Int8KVLayer()):
        nan = torch.full((1, 1, 1, 32), float("nan"))
        layer.update(torch.randn(1, 1, 1, 32), nan)  # a decode step: not checked, no sync
        with pytest.raises(ValueError, match="NaN"):
            layer.update(torch.randn(1, 1, 2, 32), torch.cat([nan, nan], 2))
        monkeypatch.setattr(kv_quant, "CHECK_EVERY_STEP", True)
        with pytest.raises(ValueError, match="NaN"):
            layer.update(torch.randn(1, 1, 1, 32), nan)
        monkeypatch.setattr(kv_quant, "CHECK_EVERY_STEP", False)
