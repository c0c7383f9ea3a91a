"""Decode step latency: DynamicCache vs StaticKVArena (eager, + CUDA graph) vs transformers'
StaticCache + torch.compile(mode="reduce-overhead"), on no-weights models with real shapes.

Imported by `memory_bench` (the entry point). Needs only torch and transformers: no hydra. Weights
are random (speed does not depend on their values); the configs carry the real dimensions.
"""

from __future__ import annotations

import time

import torch

from optim.base import cache_nbytes
from optim.static_kv_arena import GraphedDecoder, StaticKVArena, cache_kwarg

WARMUP, STEPS = 5, 30  # steps after warm-up; the issue asks for a median of >= 20


def llama31_8b_config(layers: int = 8):
    """Llama-3.1-8B dimensions (hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocab 128256).

    Fewer layers than the real 32 so it fits the time budget; default RoPE (the llama3 scaling
    changes the rotary frequencies, not the work per step)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )


def gemma3_270m_config():
    """Gemma-3-270M: 18 layers (every 6th global, the rest 512-token sliding), 4 heads, 1 KV head,
    head_dim 256, hidden 640, MLP 2048, vocab 262144, tied embeddings."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, max_position_embeddings=32768, tie_word_embeddings=True,
    )


def tiny_configs():
    """Smoke sizes: same architectures, a few layers, small dims (CPU, seconds)."""
    from transformers import Gemma3TextConfig, LlamaConfig

    llama = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    gemma = Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                             sliding_window=8, layer_types=["sliding_attention"] * 3 + ["full_attention"],
                             max_position_embeddings=512)
    return {"llama_tiny": llama, "gemma3_tiny": gemma}


def build_model(config, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with device:  # initialise on the device: a CPU init of 8B-shaped layers would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _timed_steps(step, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Milliseconds per step. CUDA events bracket each step on the stream, so host launch gaps
    (what graphs remove) count, and no host sync sits between steps."""
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def _alloc_count(device: torch.device) -> int | None:
    return torch.cuda.memory_stats(device)["allocation.all.allocated"] if device.type == "cuda" else None


def run_method(model, method: str, batch: int, ctx: int, device, warmup: int, steps: int) -> dict:
    """Prefill `ctx` random tokens, then time greedy one-token decode steps with one cache method."""
    from transformers import DynamicCache, StaticCache

    config, kw = model.config, cache_kwarg(model)
    max_len = ctx + warmup + steps + 4
    prompt = torch.randint(3, config.vocab_size, (batch, ctx), device=device)
    extra: dict = {}
    with torch.no_grad():
        if method == "dynamic":
            cache = DynamicCache(config=config)
        elif method == "static_compile":
            cache = StaticCache(config=config, max_cache_len=max_len)
        else:
            cache = StaticKVArena(config, max_len)
        logits = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{kw: cache}).logits
        state = {"next": logits.argmax(-1)}
        del logits

        if method in ("arena_eager", "arena_graph"):
            decoder = GraphedDecoder(model, cache, use_graph=method == "arena_graph")

            def step():
                state["next"] = decoder.step(state["next"]).argmax(-1)
        elif method == "dynamic":

            def step():
                state["next"] = model(input_ids=state["next"], use_cache=True, **{kw: cache}).logits.argmax(-1)
        else:
            from torch import _dynamo  # not `import torch._dynamo`: that would make `torch` a local name

            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
            _dynamo.utils.counters.clear()
            compiled = torch.compile(model.forward, mode="reduce-overhead")
            pos = {"p": ctx}

            def step():
                # Explicit tensor positions: the cache's own length is a Python int on sliding layers,
                # which would specialise the compiled graph on every step.
                position_ids = torch.full((1, 1), pos["p"], dtype=torch.long, device=device)
                out = compiled(input_ids=state["next"], position_ids=position_ids, use_cache=True, **{kw: cache})
                state["next"] = out.logits.argmax(-1).clone()  # cudagraph outputs are overwritten on replay
                pos["p"] += 1

            t0 = time.perf_counter()
            step()  # first call compiles and records; counted as warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            extra["compile_s"] = round(time.perf_counter() - t0, 2)
            warmup = max(warmup - 1, 1)

        allocs_before = _alloc_count(device)
        times = _timed_steps(step, device, warmup, steps)
        allocs_after = _alloc_count(device)
        if allocs_before is not None:
            # Counted over the warm-up plus the timed steps; a replayed graph makes no allocator calls.
            extra["allocs_per_step"] = round((allocs_after - allocs_before) / (warmup + steps), 2)
        if method == "static_compile":
            from torch import _dynamo

            stats = _dynamo.utils.counters["stats"]
            extra["dynamo_unique_graphs"] = stats.get("unique_graphs")
            extra["dynamo_calls_captured"] = stats.get("calls_captured")
        extra["kv_bytes"] = cache.nbytes if isinstance(cache, StaticKVArena) else cache_nbytes(cache)
    return {"samples_ms": times, **extra}


def decode_cases(smoke: bool, batches, contexts, compile_cases):
    """(model name, config, batch, ctx, methods) in run order; compile only where asked (its cost)."""
    if smoke:
        for name, cfg in tiny_configs().items():
            for batch in batches:
                yield name, cfg, batch, 16, ["dynamic", "arena_eager", "arena_graph", "static_compile"]
        return
    models = {"gemma3_270m": (gemma3_270m_config, "18 layers (all)"), "llama31_8b": (llama31_8b_config, "8 of 32 layers")}
    for name, (make, _) in models.items():
        cfg = make()
        for ctx in contexts:
            for batch in batches:
                methods = ["dynamic", "arena_eager", "arena_graph"]
                if (name, batch, ctx) in compile_cases or ("*", batch, ctx) in compile_cases:
                    methods.append("static_compile")
                yield name, cfg, batch, ctx, methods


LAYERS_NOTE = {"gemma3_270m": "18 of 18 layers", "llama31_8b": "8 of 32 layers, default RoPE",
               "llama_tiny": "smoke", "gemma3_tiny": "smoke"}
