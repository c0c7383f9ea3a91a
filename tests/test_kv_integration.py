"""The KV family on the real Gemma-3-270M (15 sliding + 3 global layers, head_dim 256): real K/V
reconstruction and a short greedy generate() against the full-precision cache."""

import pytest
import torch

from optim.base import FullPrecisionKV, cache_nbytes, plain_kv_bytes
from optim.kv_adaptive import AdaptiveKV
from optim.kv_mixed import MixedPrecisionKV
from optim.kv_quant import decode, encode
from optim.kv_temporal import TemporalKV

pytestmark = pytest.mark.integration

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
        "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. ") * 2


@pytest.fixture(scope="module")
def gemma():
    from ollm_bench.models import load_pretrained

    lm = load_pretrained("gemma3_270m")
    return lm.model, lm.tokenizer


def test_real_kv_reconstruction(gemma):
    model, tok = gemma
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :128]
    cache = FullPrecisionKV().make_cache(model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    k, v = cache.layers[5].keys.float(), cache.layers[5].values.float()  # a global layer
    k, v = k[:, :, : k.shape[2] // 64 * 64], v[:, :, : v.shape[2] // 64 * 64]
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(decode(encode(k, ("channel", 4, 64)), ("channel", 4, 64), torch.float32), k) < 0.15
    assert rel(decode(encode(v, ("fp8",)), ("fp8",), torch.float32), v) < 0.05


@pytest.mark.parametrize(
    "method", [MixedPrecisionKV(), TemporalKV(), AdaptiveKV(max_error=0.3)],
    ids=lambda m: type(m).__name__,
)
def test_greedy_generate_close_to_baseline(gemma, method):
    """Measure: fraction of the 8 greedy tokens equal to the full-precision cache's, and bytes shrink."""
    model, tok = gemma
    ids = tok(TEXT, return_tensors="pt").input_ids
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        base = model.generate(ids, **kw)
        cache = method.make_cache(model.config)
        out = model.generate(ids, cache=cache, **kw)
    n = ids.shape[1]
    agree = (out[:, n:] == base[:, n:]).float().mean().item()
    assert agree >= 0.75, agree
    assert cache_nbytes(cache) < plain_kv_bytes(model.config, out.shape[1])  # short context: windows dominate
