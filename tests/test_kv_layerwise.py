"""kv_layerwise: a cheaper layout on the layers a measured ranking names least sensitive."""

import pytest
import torch

from ollm_bench.models import build_random_model, tiny_gemma3_config, tiny_llama_config
from optim import FormatKV, LayerwiseKV, cache_nbytes
from optim.kv_layerwise import model_key


def test_model_key_tells_layouts_apart():
    assert model_key(tiny_llama_config()) == "llama_3x2x64"
    assert model_key(tiny_gemma3_config(layers=4)) == "gemma3_text_4x1x32"


def _filled(method, config, tokens=400):
    model = build_random_model(config)
    cache = method.make_cache(config)
    with torch.inference_mode():
        model(input_ids=torch.randint(3, 250, (1, tokens)), past_key_values=cache, use_cache=True)
    return cache


def test_ranked_layers_go_low_in_order_and_bytes_follow():
    config = tiny_llama_config(layers=4)
    ranking = {model_key(config): [2, 0, 3, 1]}
    half = _filled(LayerwiseKV(ranking=ranking, low_fraction=0.5), config)
    assert [layer.value_spec for layer in half.layers] == [("token", 2, 32), ("token", 4, 64),
                                                           ("token", 2, 32), ("token", 4, 64)]
    none = cache_nbytes(_filled(LayerwiseKV(ranking=ranking, low_fraction=0.0), config))
    every = cache_nbytes(_filled(LayerwiseKV(ranking=ranking, low_fraction=1.0), config))
    k4v4 = cache_nbytes(_filled(FormatKV(), config))
    assert none == k4v4 and every < cache_nbytes(half) < none


def test_probe_layers_override_the_ranking():
    config = tiny_llama_config(layers=3)
    cache = _filled(LayerwiseKV(probe_layers=[1]), config)  # no ranking needed for a probe
    assert [layer.value_spec[1] for layer in cache.layers] == [4, 2, 4]
    with pytest.raises(ValueError, match=r"probe layers \[3\] outside the model's 3 layers"):
        LayerwiseKV(probe_layers=[3]).make_cache(config)


def test_a_model_without_a_ranking_is_refused_naming_the_command():
    with pytest.raises(ValueError, match="calibrate optim=kv_layerwise"):
        LayerwiseKV(ranking={"llama_30x3x64": list(range(30))}).make_cache(tiny_llama_config())
    with pytest.raises(ValueError, match="each of its 3 layers once"):
        LayerwiseKV(ranking={"llama_3x2x64": [0, 0, 1]}).make_cache(tiny_llama_config())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="low_fraction"):
        LayerwiseKV(low_fraction=1.5)
    with pytest.raises(ValueError, match="keys need at least"):
        LayerwiseKV(low_key=["channel", 2, 32], low_value=["token", 4, 32])  # the low layout obeys it too
