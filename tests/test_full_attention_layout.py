"""Every method on a full-attention model: SmolLM2-135M's layout (Llama, full attention in every layer,
grouped-query heads, head_dim 64) shrunk to a tiny random Llama (3 layers, 4 query / 2 KV heads).
On Gemma-3 only 3 of 18 layers are global; here every layer is, so every layer is compressed,
evicted or routed. Methods run with their registered settings (conf/optim), as the sweeps run them."""

import math

import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ollm_bench.evaluate.scoring import prefill, score_tail
from ollm_bench.methods import build_method, optim_names
from ollm_bench.models import build_random_model, tiny_llama_config
from optim.attn_base import AttentionMechanism
from optim.base import cache_nbytes, layer_specs, storage_report
from tests.broken_caches import ZeroValuesKV
from tests.kv_helpers import chunked_logits

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM, BATCH = 3, 4, 2, 64, 2
LENGTH, CONTEXT, CHUNK = 320, 256, 64  # long enough for every default window/block to compress

# max |logit - baseline logit| / max |baseline logit| after a chunked prefill of LENGTH tokens; measured
# about half of each bound. A cache that stores zero values reaches 0.9 (test_bounds_see_a_broken_cache).
KV_TOL = {"kv_int8": 0.01, "kv_mixed": 0.04, "kv_pattern": 0.04, "kv_temporal": 0.04, "kv_kivi": 0.1,
          "kv_hf_int4": 0.06, "kv_hf_int2": 0.25, "kv_adaptive": 0.3, "static_arena": 1e-6, "kv_k4v4": 0.02,
          "kv_k4v2": 0.07, "kv_layerwise": 0.1}
PRESS_TOL = {"kvpress_streaming": 0.4, "kvpress_snapkv": 0.3, "kv_snapkv_k4v4": 0.3}  # half of the context evicted on every layer
# Registered windows (>= 385 tokens) are longer than LENGTH; these short ones make each pattern bite.
SHORT = {"attn_sliding": dict(window_size=16, sinks=2), "attn_sparse": dict(block=8, local_blocks=2, stride=3),
         "attn_multiscale": dict(window_size=16, block=8, levels=2),
         "attn_hybrid": dict(sub_params={"attn_sliding": {"window_size": 16}}), "attn_native_sliding": dict(window_size=16)}
ATTENTION = [*SHORT, "attn_full", "attn_router"]


@pytest.fixture(scope="module")
def llama():
    config = tiny_llama_config()
    return config, build_random_model(config)


@pytest.fixture(scope="module")
def ids(llama):
    return torch.randint(3, llama[0].vocab_size, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(llama, ids):
    with torch.no_grad():
        return llama[1](ids).logits


# Registered without a ranking (it is measured per model on the calibration split): one for this layout,
# the first layer least sensitive, so half of the 3 layers (rounded: 2) hold the 2-bit layout.
FIXED = {"attn_router": {"history_path": None}, "kv_layerwise": {"ranking": {"llama_3x2x64": [0, 2, 1]}},
         # every tier within LENGTH tokens (the calibrated schedule keeps 8 bits to age 512)
         "kv_temporal": {"schedule": [[8, 128], [4, None]]}}


def method(name: str, **params):
    return build_method(name, **FIXED.get(name, {}), **params)


def rel_err(out, ref) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_every_registered_method_is_covered_here(llama):
    from ollm_bench.methods import optim_config

    assert {n for n in optim_names() if optim_config(n).kind != "memory"} == {"baseline", *KV_TOL, *PRESS_TOL, *ATTENTION}
    assert [s.sliding_window for s in layer_specs(llama[0])] == [None] * LAYERS


def test_chunked_scoring_equals_one_shot_for_the_baseline(llama, ids, reference):
    config, model = llama
    cache = method("baseline").make_cache(config)
    last = prefill(model, ids[:, :CONTEXT], cache, 48)
    nll, _ = score_tail(model, ids[:, CONTEXT:], cache, last, 16)
    ref = -torch.log_softmax(reference[:, CONTEXT - 1 : -1].float(), -1).gather(-1, ids[:, CONTEXT:, None]).sum((1, 2))
    torch.testing.assert_close(nll.float(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(KV_TOL))
def test_kv_method_holds_every_layer_and_stays_close(llama, ids, reference, name):
    config, model = llama
    cache = method(name).make_cache(config)
    out = chunked_logits(model, ids, cache, CHUNK)
    assert rel_err(out, reference) <= KV_TOL[name]
    assert cache.get_seq_length() == LENGTH
    # No layer is left to a plain cache (on Gemma-3 some methods leave its sliding layers alone).
    assert not any(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers)


def test_bounds_see_a_broken_cache(llama, ids, reference):
    broken = rel_err(chunked_logits(llama[1], ids, ZeroValuesKV().make_cache(llama[0]), CHUNK), reference)
    assert broken > 2 * max(KV_TOL.values()) and broken > 2 * max(PRESS_TOL.values())


def _per_token_head(spec) -> float:
    """Documented bytes per token and KV head of one compressed store (optim/kv_quant.py layouts)."""
    if spec[0] == "fp8":
        return HEAD_DIM + 2  # fp8 codes + one fp16 scale
    bits, group = spec[1], spec[2]
    return HEAD_DIM * bits / 8 + 2 * 2 * HEAD_DIM / group  # packed codes + fp16 scale and zero per group


WINDOW16 = 2 * HEAD_DIM * 2  # a 16-bit window token: keys and values


def _layer_bytes(name, layer) -> float:
    """What the method's docstring says one layer stores after LENGTH tokens, per sequence and KV
    head, from the layer's own split into compressed store and window."""
    if name == "kv_int8":
        return LENGTH * 2 * (HEAD_DIM + 2)  # int8 codes + fp16 scale per token, keys and values
    if name == "static_arena":
        return 2 * 4096 * HEAD_DIM * 4  # fp32 slots for the model's 4096-token context, not 32768
    if name in ("kv_hf_int4", "kv_hf_int2"):
        window = layer.keys.shape[-2] if layer.keys.dim() == 4 else 0
        quantized = (LENGTH - window) * HEAD_DIM
        # packed codes + fp32 scale and shift per q_group_size (64) elements, keys and values; fp32 window
        return 2 * (quantized * layer.nbits / 8 + quantized / 64 * 2 * 4) + window * 2 * HEAD_DIM * 4
    if name == "kv_temporal":
        rows = layer.bits_by_age()
        assert [r["bits"] for r in rows] == [16, 8, 4]  # youngest 16-bit, 8-bit to age 128 (FIXED), then 4-bit
        return sum(r["tokens"] * (WINDOW16 if r["bits"] == 16 else 2 * (8 * r["bits"] + 4)) for r in rows)
    window, stored = layer.res_k.shape[-2], layer.stored_tokens() - layer.res_k.shape[-2]
    if name == "kv_pattern":  # int4 keys as kv_mixed; values: int32 index + shared pool rows
        pool = layer.v_pool["codes"].shape[0] / BATCH / KV_HEADS  # one pool per layer, shared
        return stored * (_per_token_head(layer.key_spec) + 4) + pool * (HEAD_DIM + 2 + 8) + window * WINDOW16
    return stored * (_per_token_head(layer.key_spec) + _per_token_head(layer.value_spec)) + window * WINDOW16


DTYPES = {
    "kv_int8": {"keys_q": "int8", "values_q": "int8", "keys_scale": "float16", "values_scale": "float16"},
    "kv_mixed": {"k_store.codes": "uint8", "k_store.scale": "float16", "v_store.codes": "float8_e4m3fn"},
    "kv_kivi": {"k_store.codes": "uint8", "v_store.codes": "uint8", "v_store.zero": "float16", "res_k": "float16"},
    "kv_pattern": {"v_index": "int32", "v_pool.codes": "float8_e4m3fn", "v_pool.sig": "int64"},
    "kv_temporal": {"tiers[0].k.codes": "uint8", "tiers[1].v.scale": "float16", "res_k": "float16"},
}


@pytest.mark.parametrize("name", ["kv_int8", "kv_mixed", "kv_kivi", "kv_pattern", "kv_temporal", "kv_hf_int4",
                                  "kv_hf_int2", "static_arena"])
def test_stored_bytes_and_dtypes_are_as_documented(llama, ids, name):
    config, model = llama
    cache = method(name).make_cache(config)
    chunked_logits(model, ids, cache, CHUNK)
    assert cache_nbytes(cache) == round(BATCH * KV_HEADS * sum(_layer_bytes(name, layer) for layer in cache.layers))
    held = {path: entry["dtype"] for path, entry in storage_report(cache)["tensors"].items()}
    assert DTYPES.get(name, {}).items() <= held.items()


def test_adaptive_chooses_per_layer_on_every_layer(llama, ids):
    cache = method("kv_adaptive").make_cache(llama[0])
    chunked_logits(llama[1], ids, cache, CHUNK)
    choices = type(method("kv_adaptive")).choices(cache)
    assert [c["layer"] for c in choices] == list(range(LAYERS))
    bits = {c["name"]: {"kivi2": 2, "kivi4": 4, "mixed": 4, "int8": 8, "fp16": 16}[c["name"]] for c in choices}
    assert set(storage_report(cache)["payload_bits"]["key"]) == set(bits.values())


@pytest.mark.parametrize("name", sorted(PRESS_TOL))
def test_kvpress_evicts_half_of_every_layer(llama, ids, reference, name):
    pytest.importorskip("kvpress")
    config, model = llama
    press = method(name)
    press.attach(model)
    try:
        cache = press.make_cache(config)
        with torch.no_grad():  # the press fires once, at the end of a one-shot prefill
            out = torch.cat([model(ids[:, :CONTEXT], cache=cache, use_cache=True).logits,
                             chunked_logits(model, ids[:, CONTEXT:], cache, 16)], 1)
    finally:
        press.detach(model)
    assert [layer.evicted for layer in cache.layers] == [CONTEXT // 2] * LAYERS
    kept_fp32 = LAYERS * 2 * BATCH * KV_HEADS * (LENGTH - CONTEXT // 2) * HEAD_DIM * 4
    if name.startswith("kvpress_"):  # the peers keep the kept tokens in the model's fp32
        assert cache_nbytes(cache) == kept_fp32
    else:  # ours: 16-bit windows, the rest compressed (here the windows hold nearly everything)
        assert cache_nbytes(cache) <= kept_fp32 / 2
    torch.testing.assert_close(out[:, :CONTEXT], reference[:, :CONTEXT])  # the prefill itself saw everything
    assert rel_err(out[:, CONTEXT:], reference[:, CONTEXT:]) <= PRESS_TOL[name]


def test_quanto_peer_equals_transformers_quantized_cache(llama, ids):
    """On a full-attention model transformers' own QuantizedCache applies; ours builds the same layers."""
    pytest.importorskip("optimum.quanto")
    from transformers import QuantizedCache

    config, model = llama
    peer = method("kv_hf_int4")
    ours = chunked_logits(model, ids, peer.make_cache(config), CHUNK)
    theirs = QuantizedCache(backend="quanto", config=config, nbits=peer.nbits, q_group_size=peer.q_group_size,
                            residual_length=peer.residual_length)
    torch.testing.assert_close(ours, chunked_logits(model, ids, theirs, CHUNK), rtol=0, atol=0)


def _attached_logits(model, mech, ids, seq_len=None, chunk=CHUNK):
    mech.attach(model, context_text="plain text " * 40, seq_len=seq_len)
    try:
        return chunked_logits(model, ids, method("baseline").make_cache(model.config), chunk)
    finally:
        mech.detach(model)


@pytest.mark.parametrize("name", ATTENTION)
def test_window_longer_than_the_sequence_equals_full_attention(llama, ids, reference, name):
    config, model = llama
    mech = method(name)
    if name == "attn_router":  # every candidate but full attention is infeasible at 320 tokens
        out = _attached_logits(model, mech, ids, seq_len=LENGTH)
        assert mech.last["choice"] == "attn_full" and mech.last["context"]["model"] == "llama-3x64-3full"
    else:
        out = _attached_logits(model, mech, ids)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    if name not in ("attn_full", "attn_router"):  # asked for that length, it says why it will not run
        with pytest.raises(ValueError, match=rf"{name}: window \d+ is larger than the sequence \(320 tokens\)"):
            mech.attach(model, seq_len=LENGTH)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", list(SHORT))
def test_short_window_applies_on_every_layer(llama, ids, reference, name):
    config, model = llama
    mech = method(name, **SHORT[name])
    chunked = _attached_logits(model, mech, ids, seq_len=LENGTH, chunk=48)
    assert (chunked - reference).abs().max() > 1e-3
    if isinstance(mech, AttentionMechanism):
        assert sorted(layer for (layer, _), p in mech._patterns.items() if p is not None) == list(range(LAYERS))
        whole = _attached_logits(model, mech, ids, seq_len=LENGTH, chunk=LENGTH)
    else:  # transformers' own window mask on every layer == our window with no sinks, on every layer
        whole = _attached_logits(model, method("attn_sliding", window_size=16, sinks=0), ids, chunk=LENGTH)
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_formats_that_do_not_fit_the_heads_refuse_at_build_time():
    narrow = tiny_llama_config(head_dim=32)
    with pytest.raises(ValueError, match="kv_temporal: head_dim 32 is not divisible by the value group size 64"):
        method("kv_temporal").make_cache(narrow)
    with pytest.raises(ValueError, match="kv_kivi: head_dim 64 is not divisible by the value group size 48"):
        method("kv_kivi", value_group=48).make_cache(tiny_llama_config())


def test_tiny_llama_runs_through_the_sweep(cli, tmp_path):
    from tests.conftest import TINY

    args = [a for a in TINY if not a.startswith("model")]
    cli("sweep", *args, "model=tiny_llama", "model.weights=true", "optim=baseline,kv_int8", "content=prose",
        f"results_dir={tmp_path}", "suite_name=t", "runner.isolation=inline", check=0)
    import pandas as pd

    df = pd.read_csv(tmp_path / "t" / "runs.csv").set_index("optim")
    assert set(df.status) == {"ok"} and set(df.model) == {"tiny_llama"} and math.isfinite(df.ppl["kv_int8"])
    assert df.kv_ratio["baseline"] == 2.0 and df.kv_ratio["kv_int8"] < 0.6
