"""GPU speed benchmark of the KV-cache family: prefill and decode tokens/s, KV bytes, and where a decode
step's time goes (cache update incl. dequantization vs attention).

Standalone on purpose: needs only torch, transformers and pandas (plus this repo's `optim`), no Hydra,
so it runs on a GPU machine without the harness's dependencies:

    python -m ollm_bench.gpu.kv_bench --out results/kv_gpu          # H100/H200, bf16
    python -m ollm_bench.gpu.kv_bench --out /tmp/kv --smoke         # CPU, tiny sizes, seconds

Model: "no-weights" Llama-3.1-8B shapes (hidden 4096, 32 query / 8 KV heads, head_dim 128, MLP 14336,
vocab 128256), random bf16 weights; speed and memory do not depend on weight values. Only `--layers`
of the 32 decoder layers are built (default 8) to save time and memory; every row says so, and
per-layer costs scale linearly with the layer count. Never use these numbers for quality.

Timing: CUDA events around each phase (perf_counter on CPU), one untimed warm-up per combination,
`--repeats` (>= 5 by default) fresh caches per combination; median, min and max are written. Prefill is
chunked (`--chunk` tokens per forward), as the harness does, so every method sees the same calls.
A combination that runs out of memory is recorded as `oom` and the sweep goes on.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import time
from pathlib import Path

import torch

# name -> (module, class, kwargs): the YAML defaults of conf/optim, kept here so Hydra is not needed.
METHODS = {
    "baseline": ("optim.base", "FullPrecisionKV", {}),
    "kv_int8": ("optim.kv_int8", "Int8KV", {}),
    "kv_mixed": ("optim.kv_mixed", "MixedPrecisionKV", {"group_size": 64, "residual": 0}),
    "kv_temporal": ("optim.kv_temporal", "TemporalKV", {}),
    "kv_pattern": ("optim.kv_pattern", "PatternAwareKV", {}),
    "kv_adaptive": ("optim.kv_adaptive", "AdaptiveKV", {}),
    "kv_kivi": ("optim.kv_kivi", "KiviKV", {}),
    "kv_hf_int4": ("optim.kv_hf_quantized", "HFQuantizedKV", {"nbits": 4}),
    "kv_hf_int2": ("optim.kv_hf_quantized", "HFQuantizedKV", {"nbits": 2}),
    # kvpress peers: one-shot prefill (kvpress compresses once, after it), then half the keys evicted.
    "kvpress_streaming": ("optim.kv_press", "KVPressPeer", {"press": "streaming_llm", "compression_ratio": 0.5}),
    "kvpress_snapkv": ("optim.kv_press", "KVPressPeer", {"press": "snapkv", "compression_ratio": 0.5}),
}
REAL_LAYERS = 32


def make_method(name: str):
    module, cls, kwargs = METHODS[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


def llama_config(smoke: bool, layers: int):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=64, num_hidden_layers=2, vocab_size=256, max_position_embeddings=4096)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, num_hidden_layers=layers, vocab_size=128256, rope_theta=500000.0,
                       max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False)


class Timer:
    """Elapsed seconds of a block: CUDA events on GPU (device time, not launch time), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def forward(model, ids, cache, cache_kw: str):
    # logits_to_keep=1: the full [batch, tokens, 128k] logits would dwarf the KV cache at 32k context
    return model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})


def run_once(model, method, ids, decode_steps, chunk, cache_kw, device):
    cache = method.make_cache(model.config)
    if getattr(cache, "one_shot_prefill", False):
        chunk = ids.shape[1]
    with torch.no_grad():
        with Timer(device) as pre:
            for s in range(0, ids.shape[1], chunk):
                forward(model, ids[:, s : s + chunk], cache, cache_kw)
        step = ids[:, -1:]
        with Timer(device) as dec:
            for _ in range(decode_steps):
                forward(model, step, cache, cache_kw)
    return cache, pre.seconds, dec.seconds


def decode_split(model, cache, batch: int, device, steps: int) -> dict:
    """Per layer and decode step: time of `cache.update` for one token (append + dequantize all it holds)
    vs time of the attention kernel on what it returns (SDPA, GQA), on the already filled cache."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    k = torch.randn(batch, cfg.num_key_value_heads, 1, cfg.head_dim, device=device, dtype=dtype)
    q = torch.randn(batch, cfg.num_attention_heads, 1, cfg.head_dim, device=device, dtype=dtype)
    upd, att = [], []
    with torch.no_grad():
        keys, values = cache.layers[0].update(k, k)  # untimed: first SDPA call at this shape picks kernels
        torch.nn.functional.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
        for _ in range(steps):
            for layer in cache.layers:
                with Timer(device) as t_u:
                    keys, values = layer.update(k, k)
                with Timer(device) as t_a:
                    torch.nn.functional.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
                upd.append(t_u.seconds)
                att.append(t_a.seconds)
    u, a = statistics.median(upd) * 1e3, statistics.median(att) * 1e3
    return dict(update_ms_per_layer=u, attention_ms_per_layer=a, update_share=u / (u + a))


def bench(args) -> list[dict]:
    import transformers

    from transformers import AutoModelForCausalLM

    from optim.base import cache_nbytes, plain_kv_bytes

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layers = 2 if args.smoke else args.layers
    config = llama_config(args.smoke, layers)
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the GPU: seconds, not minutes on the host
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    common = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__, transformers=transformers.__version__, dtype=str(dtype).replace("torch.", ""),
        model="tiny-llama (smoke)" if args.smoke else "llama-3.1-8b shapes, random weights",
        layers_used=layers, layers_real=2 if args.smoke else REAL_LAYERS, cache_arg=cache_kw,
        decode_steps=args.decode_steps, chunk=args.chunk,
    )
    split_steps = 3 if args.smoke else 10
    # Process-wide warm-up (CUDA context, cuBLAS handles, kernel selection at every context/batch), so the
    # first method measured does not pay for it; seen on an H100 as a 20x slower first baseline repeat.
    from optim.base import FullPrecisionKV

    for context in args.contexts:
        for batch in args.batches:
            # every KV length the timed runs will see: attention backends (cuDNN on H100) build a plan per
            # shape, and the first method to meet a length would pay ~20 ms for it inside its timing
            ids = torch.randint(0, config.vocab_size, (batch, context), device=device)
            warm, _, _ = run_once(model, FullPrecisionKV(), ids, args.decode_steps, args.chunk, cache_kw, device)
            decode_split(model, warm, batch, device, steps=split_steps)
    rows = []
    for context in args.contexts:
        for batch in args.batches:
            ids = torch.randint(0, config.vocab_size, (batch, context), device=device)
            for name in args.methods:
                row = dict(common, method=name, context=context, batch=batch, status="ok", error="")
                method = None
                try:
                    method = make_method(name)
                    if callable(getattr(method, "attach", None)):  # kvpress presses hook the model
                        method.attach(model)
                        row["chunk"] = context  # their prefill is one forward
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    # untimed warm-up at the full context: decode kernels are chosen per KV length
                    run_once(model, method, ids, 2, args.chunk, cache_kw, device)
                    pre, dec = [], []
                    for _ in range(args.repeats):
                        cache, p, d = run_once(model, method, ids, args.decode_steps, args.chunk, cache_kw, device)
                        pre.append(batch * context / p)
                        dec.append(batch * args.decode_steps / d)
                    tokens = context + args.decode_steps
                    row.update(
                        n_repeats=args.repeats,
                        prefill_tok_s=statistics.median(pre), prefill_tok_s_min=min(pre), prefill_tok_s_max=max(pre),
                        decode_tok_s=statistics.median(dec), decode_tok_s_min=min(dec), decode_tok_s_max=max(dec),
                        kv_bytes=cache_nbytes(cache), kv_bytes_16bit=plain_kv_bytes(config, tokens, batch),
                    )
                    row["kv_ratio"] = row["kv_bytes"] / row["kv_bytes_16bit"]
                    row.update(decode_split(model, cache, batch, device, steps=split_steps))
                    if device.type == "cuda":
                        row["peak_alloc_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                    del cache
                except torch.cuda.OutOfMemoryError as exc:
                    row.update(status="oom", error=str(exc).splitlines()[0][:200])
                except (ImportError, ValueError, RuntimeError) as exc:
                    status = "oom" if "out of memory" in str(exc) else "failed"
                    row.update(status=status, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                finally:
                    if callable(getattr(method, "detach", None)):
                        method.detach(model)
                rows.append(row)
                print(f"[kv_bench] {name:12s} ctx={context:6d} b={batch} {row['status']:6s} "
                      f"prefill={row.get('prefill_tok_s', float('nan')):10.1f} tok/s "
                      f"decode={row.get('decode_tok_s', float('nan')):8.1f} tok/s "
                      f"kv={row.get('kv_ratio', float('nan')):.3f}x {row['error'][:80]}", flush=True)
                write(rows, args.out)  # after every combination: a killed run keeps what it measured
    return rows


def write(rows: list[dict], out: Path) -> Path:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    path = out / "kv_gpu.csv"
    tmp = path.with_suffix(".csv.partial")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and contexts: checks the script runs")
    p.add_argument("--layers", type=int, default=8, help=f"decoder layers built, of the real {REAL_LAYERS}")
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens per forward)")
    args = p.parse_args(argv)
    if args.smoke:
        args.contexts, args.batches, args.chunk = [96, 160], [1, 2], 64
        args.repeats, args.decode_steps = min(args.repeats, 2), min(args.decode_steps, 4)
    return args


def main(argv=None) -> None:
    args = parse(argv)
    bench(args)
    print(f"[kv_bench] wrote {args.out / 'kv_gpu.csv'}")


if __name__ == "__main__":
    main()
