"""Per-layer precision from measured sensitivity: a cheaper layout on the layers that tolerate it.

Layers differ in how much quantization error they pass on to the output (KV-quantization work finds
a few layers, often the first ones, far more sensitive than the rest). This method stores every layer
in `key`/`value` (our `kv_k4v4` layout by default) except the `low_fraction` of layers that a
sensitivity ranking names least sensitive, which get `low_key`/`low_value` (by default `kv_k4v2`'s:
4-bit keys, 2-bit values, since keys are where models break). All layers at 2-bit values fail the
gate on some contents; spending value bits where a layer needs them is the point.

The ranking is data, measured on the calibration split (WikiText-2 valid.txt), never on evaluated
documents: `python -m ollm_bench calibrate optim=kv_layerwise` first probes each layer alone at the
low layout (`probe_layers=[i]`), ranks layers by the perplexity change each probe caused, writes the
ranking per model into the method's YAML, then chooses `low_fraction` like any calibrated parameter.
A model without a ranking is refused, naming the command. Models are told apart by their attention
layout (`model_key`), so a ranking never applies to a model it was not measured on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import kv_geometry, layer_specs, text_config
from .kv_format import FormatKV
from .kv_quant import SpecKVLayer, check_spec, check_window, min_window


def model_key(config: PretrainedConfig) -> str:
    """`<model_type>_<layers>x<kv_heads>x<head_dim>` (a plain identifier, so a Hydra override can name
    it): what a sensitivity ranking was measured on."""
    cfg = text_config(config)
    heads, head_dim = kv_geometry(config)
    return f"{cfg.model_type}_{cfg.num_hidden_layers}x{heads}x{head_dim}"


@dataclass
class LayerwiseKV(FormatKV):
    low_key: list = field(default_factory=lambda: ["channel", 4, 64])
    low_value: list = field(default_factory=lambda: ["token", 2, 32])
    low_fraction: float = 0.5  # share of layers (least sensitive first) at the low layout
    ranking: dict | None = None  # model_key -> layer indices, least sensitive first (None: not measured)
    probe_layers: list | None = None  # calibration probes: exactly these layers low, ranking ignored
    name: str = "kv_layerwise"

    def __post_init__(self):
        super().__post_init__()
        self.low_key, self.low_value = tuple(self.low_key), tuple(self.low_value)
        FormatKV(key=list(self.low_key), value=list(self.low_value), allow_reversed=self.allow_reversed,
                 name=f"{self.name} low layout")  # the same key >= value rule for the low layout
        if not 0.0 <= self.low_fraction <= 1.0:
            raise ValueError(f"{self.name}: low_fraction must be in [0, 1], got {self.low_fraction}")

    def low_layers(self, config: PretrainedConfig) -> set[int]:
        n = text_config(config).num_hidden_layers
        if self.probe_layers is not None:
            bad = [i for i in self.probe_layers if not 0 <= int(i) < n]
            if bad:
                raise ValueError(f"{self.name}: probe layers {bad} outside the model's {n} layers")
            return {int(i) for i in self.probe_layers}
        key, ranking = model_key(config), self.ranking or {}
        if key not in ranking:
            raise ValueError(f"{self.name}: no layer sensitivity ranking for model {key} (have: "
                             f"{sorted(ranking) or 'none'}); measure one on the calibration split with "
                             f"`python -m ollm_bench calibrate optim={self.name}`")
        order = [int(i) for i in ranking[key]]
        if sorted(order) != list(range(n)):
            raise ValueError(f"{self.name}: the ranking for {key} must list each of its {n} layers once")
        return set(order[: round(self.low_fraction * n)])

    def make_cache(self, config: PretrainedConfig) -> Cache:
        _, head_dim = kv_geometry(config)
        for spec in (self.key, self.value, self.low_key, self.low_value):
            check_spec(spec, head_dim, self.name)
        check_window(self.residual, min_window(config), self.name)
        low = self.low_layers(config)
        layers = []
        for spec in layer_specs(config):
            k, v = (self.low_key, self.low_value) if spec.index in low else (self.key, self.value)
            layers.append(SpecKVLayer(k, v, residual=self.residual, sliding_window=spec.sliding_window,
                                      name=self.name, sinks=self.sinks))
        return Cache(layers=layers)
