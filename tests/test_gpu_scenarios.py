"""The attention and memory scenarios through the real CLI on CPU (scenario.allow_cpu=true, the tiny
model, tiny sizes: the same code the GPU suites run, never evidence), their refusal without CUDA,
and the allocator-setting plumbing. The CUDA-only test at the end runs on a GPU machine."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from ollm_bench.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
CPU = ["model=tiny_random", "scenario.allow_cpu=true", "runner.isolation=inline"]
MEMORY_TINY = [*CPU, "seq_len=32", "scenario.model_layers=2", "scenario.samples=3", "scenario.inner=5",
               "scenario.steps=2", "scenario.requests=6", "scenario.concurrency=2", "scenario.decode_tokens=[4,12]"]
MIXES = ("kv_blocks", "decode_step", "prefill_step", "mixed")


def stored(results, suite):
    df = pd.read_csv(results / suite / "runs.csv")
    df["extra"] = df.extra.map(lambda v: json.loads(v) if isinstance(v, str) else {})
    return df


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_suites_refuse_a_machine_without_cuda(cli, tmp_path):
    from ollm_bench.run.validate import validate_sweep

    proc = cli("sweep", "suite=memory_gpu", f"results_dir={tmp_path}")
    assert proc.returncode == 2
    assert "measures allocator workloads on a CUDA GPU and this machine has none" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store created, no row written
    with pytest.raises(ConfigError, match="measures attention speed on a CUDA GPU"):
        validate_sweep(["suite=attention_gpu"])


def test_attention_suite_rows_and_report(cli, tmp_path):
    suite = ["sweep", "suite=attention_gpu", *CPU, "seq_len=512", f"results_dir={tmp_path}"]
    cli(*suite, "optim=attn_full,attn_sparse", check=0)
    peer = cli(*suite, "optim=attn_native_sliding", "scenario.part=model,kernel", check=1)  # kernel: skipped
    assert "no bare kernel" in peer.stderr
    df = stored(tmp_path, "attention_gpu")
    ok = df[df.status == "ok"].set_index(["optim", "metric"])
    expected = {(o, m) for o in ("attn_full", "attn_sparse")
                for m in ("kernel_prefill_ms", "kernel_decode_ms", "model_prefill_ms")}
    assert set(ok.index) == expected | {("attn_native_sliding", "model_prefill_ms")}
    assert (ok.metric_unit == "ms").all() and (ok.metric_n >= 7).all() and (ok.seq_len == 512).all()
    assert ((ok.metric_p10 <= ok.metric_value) & (ok.metric_value <= ok.metric_p90)).all()
    ref, mech = ok.loc[("attn_full", "kernel_prefill_ms")], ok.loc[("attn_sparse", "kernel_prefill_ms")]
    assert ref.extra["backend"] == "sdpa" and ref.extra["flex_causal_ms"] > 0 and ref.extra["density"] == 1.0
    assert mech.extra["backend"] == "flex" and mech.extra["mask_build_ms"] > 0 and 0 < mech.extra["density"] <= 1
    assert ok.loc[("attn_sparse", "kernel_decode_ms")].extra["backend"] == "gather"
    model = ok.loc[("attn_native_sliding", "model_prefill_ms")].extra
    assert model["backend"] == "model_sdpa_own_mask" and model["model_layers"] == 2
    assert "first 2 of 4 decoder layers of tiny_random" in model["layers_note"]
    skipped = df[df.status == "skipped"]
    assert list(skipped.optim) == ["attn_native_sliding"] and list(skipped.metric) == ["kernel_prefill_ms"]
    cli("report", "suite=attention_gpu", f"results_dir={tmp_path}", check=0)
    report = (tmp_path / "attention_gpu" / "report.md").read_text()
    assert "## Attention kernels and prefill" in report and "× attn_full" in report
    assert all(m in report for m in ("kernel_prefill_ms", "kernel_decode_ms", "model_prefill_ms"))


def test_memory_suite_rows_and_report(cli, tmp_path):
    proc = cli("sweep", "suite=memory_gpu", *MEMORY_TINY, f"results_dir={tmp_path}", check=1)
    assert proc.stderr.count("no caching-allocator statistics on CPU") == 4  # fragmentation needs CUDA
    df = stored(tmp_path, "memory_gpu")
    metrics = {"fragmentation", "alloc_time_per_step_us", *(f"alloc_us/{m}" for m in MIXES)}
    optims = {"torch_caching", "torch_expandable", "tensor_pool", "predictive_memory"}
    assert set(zip(df.optim, df.metric)) == {(o, m) for o in optims for m in metrics} and len(df) == 24
    frag = df.metric == "fragmentation"
    assert set(df[frag].status) == {"skipped"} and set(df[~frag].status) == {"ok"}
    ok = df[df.status == "ok"].set_index(["optim", "metric"])
    assert (ok.metric_unit == "us").all() and (ok.metric_n == 3).all() and (ok.metric_value > 0).all()
    assert ok.loc[("torch_expandable", "alloc_us/mixed")].extra["alloc_conf"] == "expandable_segments:True"
    assert ok.loc[("torch_caching", "alloc_us/mixed")].extra["alloc_conf"] == ""
    mixed = {o: ok.loc[(o, "alloc_us/mixed")].extra for o in optims}
    assert mixed["tensor_pool"]["pool_hit_rate"] > 0.5 and mixed["tensor_pool"]["pool_bytes_held"] > 0
    assert mixed["predictive_memory"]["prediction_hit_rate"] > 0.5 and "pool_hit_rate" not in mixed["torch_caching"]
    assert mixed["tensor_pool"]["requests_per_step"] == 17  # kv_blocks 4 + decode_step 8 + prefill_step 5
    step = ok.loc[("tensor_pool", "alloc_time_per_step_us")]
    assert 0 < step.extra["alloc_share"] < 1 and step.extra["step_us"] > step.metric_value
    served = df[frag & (df.optim == "predictive_memory")].extra.iloc[0]
    assert served["allocations"] > 0 and served["prediction_hit_rate"] >= 0  # the workload ran on every allocator
    cli("report", "suite=memory_gpu", f"results_dir={tmp_path}", check=0)
    report = (tmp_path / "memory_gpu" / "report.md").read_text()
    assert "## Allocator workloads" in report and "× torch_caching" in report and "alloc_us/prefill_step" in report


def test_memory_scenario_knobs_and_allocator_setting(monkeypatch):
    from ollm_bench.scenarios.memory import MemoryScenario, _on_device, set_alloc_conf
    from optim.torch_caching import wants_expandable

    with pytest.raises(ConfigError, match="needs scenario.mix"):
        MemoryScenario(workload="alloc_latency")
    with pytest.raises(ConfigError, match="alloc_latency only"):
        MemoryScenario(workload="fragmentation", mix="mixed")
    with pytest.raises(ConfigError, match="decode_tokens"):
        MemoryScenario(decode_tokens=[9, 3])
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    set_alloc_conf("")  # the default run must not inherit a setting from the caller's environment
    assert "PYTORCH_ALLOC_CONF" not in os.environ and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    set_alloc_conf("expandable_segments:True")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    assert wants_expandable("max_split_size_mb:64, expandable_segments:True") and not wants_expandable("")
    nested = {"_target_": "optim.predictive_memory.PredictiveMemoryManager",
              "pool": {"_target_": "optim.tensor_pool.TensorPool", "max_bytes": None}}
    placed = _on_device(nested, "cuda:0")
    assert placed["pool"]["device"] == "cuda:0" and "device" not in placed  # only classes that take one


def test_attention_scenario_refuses_too_few_repeats_and_other_kinds():
    from ollm_bench.scenarios.attention import AttentionScenario

    with pytest.raises(ConfigError, match="repeats must be >= 7"):
        AttentionScenario(repeats=5)
    with pytest.raises(ConfigError, match="part"):
        AttentionScenario(part="prefill")
    from ollm_bench.run.validate import validate_sweep

    with pytest.raises(ConfigError, match="kind 'kv_cache'"):
        validate_sweep(["suite=attention_gpu", "optim=kv_int8", "seq_len=512", *CPU])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the allocator setting is checked on the GPU")
def test_expandable_segments_take_effect_in_the_run_process(cli, tmp_path):
    """Each run in its own process: torch_expandable's segments are expandable, torch_caching's not."""
    cli("sweep", "suite=memory_gpu", "optim=torch_caching,torch_expandable,tensor_pool",
        "memory_workload=fragmentation", "scenario.requests=8", f"results_dir={tmp_path}", check=0)
    df = stored(tmp_path, "memory_gpu").set_index("optim")
    assert df.loc["torch_expandable"].extra["expandable_segments"] is True
    assert df.loc["torch_caching"].extra["expandable_segments"] is False
    assert (df.metric == "fragmentation").all() and df.metric_value.between(0, 1).all()
    assert df.loc["tensor_pool"].extra["largest_fit_torch_bytes"] >= 0


def test_gemma_noweights_entry_builds_a_model_part_of_gemma_shapes():
    """The no-weights Gemma entry (conf/model) gives Gemma-3-270M's config, and a model part of its
    first layers keeps one layer kind per layer (transformers rejects a mismatch) and nested maps as dicts."""
    from omegaconf import OmegaConf

    from ollm_bench.config import ModelConfig
    from ollm_bench.models import build_random_model, random_weights_config

    entry = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF / "model" / "gemma3_270m_noweights.yaml"))
    full = random_weights_config(entry)
    assert (full.model_type, full.num_hidden_layers, full.num_key_value_heads, full.head_dim) == ("gemma3_text", 18, 1, 256)
    assert full.layer_types.count("full_attention") == 3 and full.sliding_window == 512
    assert full.rope_parameters["full_attention"]["rope_theta"] == 1e6
    part = random_weights_config(entry, layers=6)
    assert part.num_hidden_layers == 6 and part.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    small = random_weights_config(OmegaConf.merge(entry, {"arch": {"vocab_size": 64, "hidden_size": 32,
                                                                    "intermediate_size": 64}}), layers=2)
    model = build_random_model(small)
    assert model(input_ids=torch.arange(8)[None]).logits.shape == (1, 8, 64)
