"""Peer: transformers' QuantoQuantizedLayer (int4/int2) on global layers, plain sliding layers."""

import pytest
import torch
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from ollm_bench.models import tiny_gemma3_config
from optim.base import cache_nbytes
from optim.kv_hf_quantized import CountedQuantoLayer, HFQuantizedKV

from .kv_helpers import assert_chunked_close, assert_generate_works

pytest.importorskip("optimum.quanto")


@pytest.mark.parametrize("nbits", [4, 2])
def test_bytes_are_the_packed_parts(nbits):
    layer = CountedQuantoLayer(nbits=nbits, q_group_size=32, residual_length=8)
    layer.update(torch.randn(2, 1, 40, 32), torch.randn(2, 1, 40, 32))
    layer.update(torch.randn(2, 1, 1, 32), torch.randn(2, 1, 1, 32))
    parts = layer.quantized_parts
    assert parts and all(type(p) is torch.Tensor for p in parts)
    codes = [p for p in parts if p.dtype == torch.uint8]
    assert sum(p.numel() for p in codes) == 2 * (2 * 40 * 32) * nbits // 8  # packed codes, K and V
    # residual (1 token, fp32) + packed codes + one fp32 scale and shift per 32-element group
    expected = 2 * 2 * 32 * 4 + 2 * (2 * 40 * 32) * nbits // 8 + 2 * 2 * (2 * 40) * 4
    assert cache_nbytes(Cache(layers=[layer])) == expected


def test_global_layers_quantized_sliding_layers_plain():
    cache = HFQuantizedKV(nbits=4, q_group_size=32, residual_length=8).make_cache(tiny_gemma3_config())
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicSlidingWindowLayer] * 3 + [CountedQuantoLayer]


@pytest.mark.parametrize("nbits, tol", [(4, 0.15), (2, 0.6)])
def test_chunked_forward_and_generate(nbits, tol):
    method = HFQuantizedKV(nbits=nbits, q_group_size=32, residual_length=8)
    assert_chunked_close(method, tol=tol)
    assert_generate_works(method, tol=0.3)


def test_fp8_backend_and_bad_config():
    assert_chunked_close(HFQuantizedKV(backend="fp8"), tol=0.1)
    with pytest.raises(ValueError, match="nbits"):
        HFQuantizedKV(nbits=8).make_cache(tiny_gemma3_config())
    with pytest.raises(ValueError, match="backend"):
        HFQuantizedKV(backend="hqq").make_cache(tiny_gemma3_config())
    with pytest.raises(ValueError, match="NaN"):
        CountedQuantoLayer(nbits=4, q_group_size=32).update(torch.full((1, 1, 2, 32), float("nan")), torch.randn(1, 1, 2, 32))
