"""kv_adaptive: per-layer choice among measured candidates under an error budget."""

import pytest
import torch
from transformers.cache_utils import Cache

from ollm_bench.models import tiny_gemma3_config
from optim.base import cache_nbytes
from optim.kv_adaptive import AdaptiveKV, AdaptiveKVLayer, attention_error, measure_candidates

from .kv_helpers import assert_batch_ops, assert_chunked_close, assert_generate_works, assert_layer_stream, both_layer_kinds

ALL = ("kivi2", "kivi4", "mixed", "int8", "fp16")


def test_measured_errors_and_bytes_are_ordered():
    k, v = torch.randn(1, 1, 40, 32), torch.randn(1, 1, 40, 32)
    m = measure_candidates(k, v, ALL, residual=0)
    errors = [m[n]["error"] for n in ALL]
    sizes = [m[n]["bytes_per_element"] for n in ALL]
    assert errors[0] > errors[1] > errors[3] > errors[4] and errors[4] < 1e-3
    assert sizes == sorted(sizes) and sizes[-1] == 2.0


def test_budget_drives_the_choice():
    k, v = torch.randn(2, 1, 40, 32), torch.randn(2, 1, 40, 32)
    loose, strict = AdaptiveKVLayer(ALL, 10.0, 0), AdaptiveKVLayer(ALL, 1e-4, 0)
    loose.update(k, v)
    strict.update(k, v)
    assert loose.choice["name"] == "kivi2" and strict.choice["name"] == "fp16"
    assert cache_nbytes(Cache(layers=[loose])) < 0.4 * cache_nbytes(Cache(layers=[strict]))  # 8 of 40 tokens wait in 16 bits
    mid = AdaptiveKVLayer(ALL, loose.choice["measured"]["int8"]["error"] * 1.01, 0)
    mid.update(k, v)
    assert mid.choice["name"] in ("kivi4", "mixed", "int8") and mid.choice["within_budget"]


def test_attention_error_sees_key_and_value_errors():
    k, v = torch.randn(1, 1, 20, 16), torch.randn(1, 1, 20, 16)
    assert attention_error(k, v, k, v) == 0
    assert attention_error(k, v, k + 0.3 * torch.randn_like(k), v) > 0.01
    assert attention_error(k, v, k, v + 0.3) > 0.01
    assert attention_error(k[:, :, :1], v[:, :, :1], k[:, :, :1], v[:, :, :1] * 2) == pytest.approx(
        (v[:, :, :1].norm() / (k[:, :, :1].norm() ** 2 + v[:, :, :1].norm() ** 2).sqrt()).item(), rel=1e-4)


def test_stream_and_model_paths():
    layer = AdaptiveKVLayer(ALL, 0.05, 2, sliding_window=16)
    assert_layer_stream(layer, [5, 0, 1, 13, 9, 1], 2, 32, 16, atol=1.5)
    method = AdaptiveKV(max_error=0.2)
    cache = assert_chunked_close(method, tol=0.3)
    picks = AdaptiveKV.choices(cache)
    assert len(picks) == 4 and all(p["name"] in ALL for p in picks)
    assert_generate_works(method, tol=0.3)
    assert_batch_ops(both_layer_kinds(lambda w: AdaptiveKVLayer(ALL, 0.1, 1, sliding_window=w)))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="unknown candidates"):
        AdaptiveKV(candidates=("kivi3",))
    with pytest.raises(ValueError, match="max_error"):
        AdaptiveKV(max_error=0)
    with pytest.raises(ValueError, match="sliding window"):
        AdaptiveKV(residual=64).make_cache(tiny_gemma3_config(sliding_window=16))
    with pytest.raises(ValueError, match="NaN"):
        AdaptiveKVLayer(ALL, 0.1, 0).update(torch.full((1, 1, 3, 32), float("nan")), torch.randn(1, 1, 3, 32))
