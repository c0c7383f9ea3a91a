"""Each attention mechanism equals dense SDPA under the same explicit mask, over many shapes:
GQA, odd lengths, batch > 1, a KV prefix (cache) with query chunks and single-token decode,
and padding. Both backends: the gathered dense path (chunked) and flex attention (eager on CPU)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optim.attn_base import explicit_mask, pattern_attention
from optim.attn_hybrid import HybridAttention, make_mechanism
from optim.attn_multiscale import MultiScaleAttention
from optim.attn_sliding import SlidingSinkAttention
from optim.attn_sparse import BlockSparseAttention

# Small parameters so that short test sequences actually exercise every rule of each pattern.
MECHANISMS = {
    "attn_sliding": SlidingSinkAttention(window_size=5, sinks=2),
    "attn_sparse": BlockSparseAttention(block=4, local_blocks=2, global_blocks=1, stride=3),
    "attn_multiscale": MultiScaleAttention(window_size=6, block=3, levels=2),
    "attn_hybrid": HybridAttention(full_heads=0.5, sub_params={"attn_sliding": {"window_size": 4, "sinks": 1}}),
    "attn_hybrid_layers": HybridAttention(
        layer_mechanisms=("attn_sparse", "attn_multiscale"),
        sub_params={"attn_sparse": {"block": 4, "local_blocks": 2, "stride": 2}, "attn_multiscale": {"window_size": 4, "block": 2}},
    ),
}


def reference(q, k, v, keep):
    """Plain SDPA with an explicit boolean mask and repeated KV heads: the ground truth."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


def run_case(mech, layer_idx, b, hkv, groups, q_len, past, d, pad, backend, seed):
    g = torch.Generator().manual_seed(seed)
    hq, kv_len = hkv * groups, past + q_len
    q = torch.randn(b, hq, q_len, d, generator=g)
    k = torch.randn(b, hkv, kv_len, d, generator=g)
    v = torch.randn(b, hkv, kv_len, d, generator=g)
    pattern = mech.pattern_for(layer_idx, hq)
    keep = explicit_mask(pattern, hq, q_len, kv_len)
    model_mask = None
    if pad:
        # Right padding of random length per row, combined with causality the way transformers does.
        lengths = torch.randint(1, kv_len + 1, (b,), generator=g)
        key_ok = torch.arange(kv_len)[None, :] < lengths[:, None]
        model_mask = explicit_mask(None, 1, q_len, kv_len) & key_ok[:, None, None, :]
        keep = keep & model_mask
    elif past and q_len > 1:
        model_mask = explicit_mask(None, 1, q_len, kv_len).expand(b, 1, q_len, kv_len)  # as with a cache
    if pattern is None:
        pytest.skip("pattern is full attention for this head count")
    out = pattern_attention(q, k, v, model_mask, pattern, backend=backend, chunk=3, block_mask_cache={})
    torch.testing.assert_close(out, reference(q, k, v, keep), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(1, 3),
    hkv=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 4]),
    q_len=st.integers(1, 29),
    past=st.integers(0, 23),
    d=st.sampled_from([8, 16]),
    pad=st.booleans(),
    layer=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_dense_path_equals_reference(name, b, hkv, groups, q_len, past, d, pad, layer, seed):
    run_case(MECHANISMS[name], layer, b, hkv, groups, q_len, past, d, pad, "dense", seed)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
@pytest.mark.parametrize(
    "shape", [(2, 1, 4, 37, 0, False), (1, 2, 2, 17, 20, False), (1, 1, 4, 130, 5, False), (2, 1, 2, 9, 3, True)]
)
def test_flex_path_equals_reference(name, shape):
    b, hkv, groups, q_len, past, pad = shape
    run_case(MECHANISMS[name], 1, b, hkv, groups, q_len, past, 16, pad, "flex", seed=q_len)


def test_sliding_pattern_is_what_it_says():
    keep = explicit_mask(SlidingSinkAttention(window_size=3, sinks=1).pattern_for(0, 1), 1, 6, 6)[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 0, 1, 1, 1, 0],
            [1, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(keep, expected)


def test_sparse_and_multiscale_drop_far_work_at_length():
    assert BlockSparseAttention().density(8192, 4) < 0.3
    assert MultiScaleAttention().density(32768, 4) < 0.15
    assert SlidingSinkAttention().density(512, 4) == 1.0  # window covers everything: same as full


def test_hybrid_heads_split():
    keep = explicit_mask(HybridAttention(full_heads=0.5, sub_params={"attn_sliding": {"window_size": 2, "sinks": 0}}).pattern_for(0, 4), 4, 8, 8)
    causal = explicit_mask(None, 1, 8, 8)[0, 0]
    assert torch.equal(keep[0, 0], causal) and torch.equal(keep[0, 1], causal)
    assert keep[0, 2].sum() == keep[0, 3].sum() == 15  # 1 + 2*7: the query and its predecessor


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: make_mechanism("attn_banana"), "unknown attention mechanism 'attn_banana'"),
        (lambda: SlidingSinkAttention(window_size=0), "window must be an integer >= 1"),
        (lambda: MultiScaleAttention(window_size=-4), "window must be an integer >= 1"),
        (lambda: BlockSparseAttention(stride=0), "stride: window must be an integer >= 1"),
        (lambda: HybridAttention(head_mechanism="attn_nope"), "unknown attention mechanism 'attn_nope'"),
        (lambda: SlidingSinkAttention(backend="cuda"), "backend must be auto, flex or dense"),
        (lambda: SlidingSinkAttention().validate(seq_len=100), r"window 512 is larger than the sequence \(100 tokens\)"),
    ],
)
def test_bad_input_raises_one_clear_error(build, message):
    with pytest.raises(ValueError, match=message):
        build()
