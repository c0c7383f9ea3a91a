"""Attention mechanisms inside a real (tiny, random-weight) Gemma-3 model: attach/detach, equality
with the model's own SDPA, chunked prefill + decode through KV caches, padding, Gemma-3's own
sliding layers left alone, and bad input."""

import pytest
import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, PretrainedConfig

from ollm_bench.models import build_random_model, tiny_gemma3_config
from optim.attn_full import FullAttention
from optim.attn_hybrid import HybridAttention, make_mechanism
from optim.attn_multiscale import MultiScaleAttention
from optim.attn_sliding import SlidingSinkAttention
from optim.attn_sparse import BlockSparseAttention
from optim.kv_int8 import Int8KV

SMALL = [
    SlidingSinkAttention(window_size=6, sinks=2),
    BlockSparseAttention(block=4, local_blocks=2, stride=3),
    MultiScaleAttention(window_size=5, block=2, levels=2),
    HybridAttention(sub_params={"attn_sliding": {"window_size": 3}}),
]


@pytest.fixture(scope="module")
def model():
    return build_random_model(tiny_gemma3_config(layers=4, sliding_window=16))


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 256, (2, 41), generator=torch.Generator().manual_seed(1))


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def test_attn_full_equals_models_own_sdpa(model, ids):
    ref = logits(model, ids)
    mech = FullAttention()
    mech.attach(model, seq_len=ids.shape[1])
    try:
        assert model.config._attn_implementation == "attn_full"
        torch.testing.assert_close(logits(model, ids), ref, atol=0, rtol=0)
    finally:
        mech.detach(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("mech", SMALL, ids=lambda m: m.name)
def test_mechanism_changes_output_and_detach_restores(model, ids, mech):
    ref = logits(model, ids)
    mech.attach(model, seq_len=ids.shape[1])
    try:
        out = logits(model, ids)
    finally:
        mech.detach(model)
    assert (out - ref).abs().max() > 1e-4  # the pattern really is applied on the global layer
    torch.testing.assert_close(logits(model, ids), ref)


@pytest.mark.parametrize("mech", SMALL, ids=lambda m: m.name)
@pytest.mark.parametrize("make_cache", [lambda cfg: DynamicCache(config=cfg), Int8KV().make_cache], ids=["dynamic", "int8"])
def test_chunked_prefill_and_decode_equal_one_shot(model, ids, mech, make_cache):
    """Positions are offset correctly: chunks and 1-token decode steps through a cache give the
    same logits as one forward over the whole sequence with the same mechanism and cache."""
    mech.attach(model)
    try:
        one_shot = logits(model, ids, past_key_values=make_cache(model.config), use_cache=True)
        cache = make_cache(model.config)
        parts, pos = [], 0
        for step in (13, 9, 7, 1, 1, 10):
            parts.append(logits(model, ids[:, pos : pos + step], past_key_values=cache, use_cache=True))
            pos += step
    finally:
        mech.detach(model)
    torch.testing.assert_close(torch.cat(parts, dim=1), one_shot, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mech", SMALL, ids=lambda m: m.name)
def test_right_padding_does_not_leak(model, ids, mech):
    """Padded keys are masked: row 0 of a right-padded batch equals row 0 run alone."""
    n = 29
    mask = torch.ones_like(ids)
    mask[0, n:] = 0
    mech.attach(model)
    try:
        batched = logits(model, ids, attention_mask=mask)[0, :n]
        alone = logits(model, ids[:1, :n])[0]
    finally:
        mech.detach(model)
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_models_own_sliding_layers_are_not_routed():
    """On a model whose layers are all 16-token sliding layers, routing changes nothing."""
    cfg = tiny_gemma3_config(layers=2, sliding_window=16)
    cfg.layer_types = ["sliding_attention"] * 2
    m = build_random_model(cfg)
    ids = torch.randint(3, 256, (1, 40))
    ref = logits(m, ids)
    mech = SlidingSinkAttention(window_size=2, sinks=0)
    mech.attach(m)
    try:
        torch.testing.assert_close(logits(m, ids), ref, atol=0, rtol=0)
    finally:
        mech.detach(m)


def test_broken_mechanism_moves_output_far(model, ids):
    """Attending only to the token itself must change predictions a lot (the quality gate's canary)."""
    ref = torch.log_softmax(logits(model, ids), -1)
    broken = SlidingSinkAttention(window_size=1, sinks=0)
    wide = SlidingSinkAttention(window_size=41, sinks=0)  # covers everything: must equal full
    outs = {}
    for mech in (broken, wide):
        mech.attach(model)
        try:
            outs[mech.window] = torch.log_softmax(logits(model, ids), -1)
        finally:
            mech.detach(model)
    kl = lambda p: (ref.exp() * (ref - p)).sum(-1).mean().item()  # noqa: E731
    assert kl(outs[41]) < 1e-6
    assert kl(outs[1]) > 100 * max(kl(outs[41]), 1e-6)


class PlainAttention(nn.Module):  # does not dispatch through AttentionInterface
    def forward(self, x):
        return x


class PlainModel(PreTrainedModel):
    config_class = PretrainedConfig

    def __init__(self, config):
        super().__init__(config)
        self.attn = PlainAttention()


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda: nn.Linear(2, 2), "cannot swap attention of Linear"),
        (lambda: PlainModel(PretrainedConfig()), "cannot swap attention of PlainModel"),
    ],
)
def test_unswappable_model_raises(target, message):
    with pytest.raises(ValueError, match=message):
        SlidingSinkAttention().attach(target())


def test_window_larger_than_model_context_raises():
    cfg = tiny_gemma3_config()
    cfg.max_position_embeddings = 256
    with pytest.raises(ValueError, match="window 512 is larger than the model's 256-token context"):
        make_mechanism("attn_sliding").attach(build_random_model(cfg))


def test_window_larger_than_sequence_raises(model):
    with pytest.raises(ValueError, match=r"attn_multiscale: window 512 is larger than the sequence \(300 tokens\)"):
        MultiScaleAttention().attach(model, seq_len=300)
    assert model.config._attn_implementation == "sdpa"
