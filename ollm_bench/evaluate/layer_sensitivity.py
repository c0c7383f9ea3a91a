"""First stage of calibrating a per-layer method (`kv_layerwise`): rank its layers by sensitivity.

For each model of the spec, every layer is probed alone at the method's low layout
(`optim.method.probe_layers=[i]`, one Hydra multirun) on `sensitivity.n_docs` documents of the
calibration split, beside a baseline on the same documents. A layer's sensitivity is the perplexity
change its probe causes; the ranking lists layers from least to most sensitive (ties by index). The
second stage (`calibrate.choose`) then picks how many of them go low, as for any calibrated
parameter. Spec block (conf/calibrate/<optim>.yaml):

    sensitivity: {n_docs: 4}
"""

from __future__ import annotations

import pandas as pd

from .. import config as cfg_mod
from ..errors import ConfigError
from ..models import model_hf_config
from ..report.quality import summarize
from ..run.store import ResultStore


def model_config(model: str, overrides: list[str]):
    """The transformers config of conf/model/<model>.yaml with the spec's `model.*` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    cfg_mod.register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=cfg_mod.CONF_DIR, version_base="1.3"):
            composed = compose(config_name="config",
                               overrides=[f"model={model}", *[o for o in overrides if o.startswith("model.")]])
            bench = cfg_mod.to_bench(composed)
    finally:
        GlobalHydra.instance().clear()
    return model_hf_config(bench.model)


def rank_layers(spec: dict, optim: str, results_dir, sweep) -> tuple[dict[str, list[int]], pd.DataFrame]:
    """({model_key: layers least sensitive first}, per-layer table). `sweep(optim, params, models,
    n_docs, extra)` runs one calibration sweep (calibrate._sweep)."""
    from optim.kv_layerwise import model_key

    sens = spec.get("sensitivity") or {}
    n_docs = int(sens.get("n_docs", 0))
    if n_docs < 2:
        raise ConfigError("sensitivity.n_docs must be >= 2 (a paired change per layer needs documents)")
    ranking, tables = {}, []
    for model in spec["models"]:
        config = model_config(model, spec.get("overrides", []))
        n = config.num_hidden_layers
        probes = ",".join(f"[{i}]" for i in range(n))
        sweep(optim, {}, [model], n_docs, [f"optim.method.probe_layers={probes}"])
        sweep("baseline", {}, [model], n_docs, [])
        summary = summarize(ResultStore(results_dir / "calibration" / "runs.csv").read())
        part = summary[(summary.optim == optim) & (summary.model == model) & (summary.n_docs == n_docs)]
        delta = {}
        for _, r in part.iterrows():
            probe = r.params.get("probe_layers")
            if isinstance(probe, list) and len(probe) == 1 and pd.notna(r.ppl_delta):
                delta[int(probe[0])] = float(r.ppl_delta)
        missing = sorted(set(range(n)) - set(delta))
        if missing:
            raise ConfigError(f"{model}: no probe result for layers {missing}; re-run the command (runs resume)")
        order = sorted(range(n), key=lambda i: (delta[i], i))
        ranking[model_key(config)] = order
        tables.append(pd.DataFrame({"model": model, "layer": order, "rank": range(n),
                                    "ppl_delta": [delta[i] for i in order]}))
    return ranking, pd.concat(tables, ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| model | rank | layer | Δppl with only this layer low |", "|---|---|---|---|"]
    lines += [f"| {r.model} | {r['rank']} | {r.layer} | {r.ppl_delta:+.2%} |" for _, r in table.iterrows()]
    return "\n".join(lines)
