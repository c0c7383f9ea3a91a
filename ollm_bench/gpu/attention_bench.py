"""GPU attention benchmark (claims C12/C13): each `optim` attention mechanism vs full SDPA.

    python -m ollm_bench.gpu.attention_bench --out DIR            # GPU, ~5 minutes
    python -m ollm_bench.gpu.attention_bench --out DIR --smoke    # CPU, tiny sizes, seconds

Needs only torch, transformers and pandas (no hydra). Two parts, both no-weights (speed does not
depend on weight values), Llama-3.1-8B shapes (32 query heads, 8 KV heads, head_dim 128, bf16):

* kernel: one attention layer's q/k/v at the real dims. Prefill at 8k, 32k, 64k (64k skipped on
  OOM) and decode (1 query vs 32k cached keys). Baselines: SDPA with the flash backend (K/V heads
  expanded before timing, so the baseline is the bare kernel) and flex attention with a plain
  causal block mask (separates "flex vs flash" from "sparsity"). Mechanisms run through
  `optim.attn_base.pattern_attention`, the code path the model uses: flex with a cached block mask
  for prefill, gathered SDPA for decode. Block-mask build time is reported separately.
* model: a 2-layer Llama-3.1-8B (random weights) prefill, mechanism attached vs plain SDPA, so
  the attention speedup is seen diluted by projections and MLP as in a real forward.

Timing: CUDA events, warm-up (includes compilation), median and spread of >= 5 repeats.
Writes DIR/attention_gpu.csv with device name and library versions on every row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from optim.attn_base import pattern_attention
from optim.attn_hybrid import make_mechanism

MECHANISMS = ("attn_sliding", "attn_sparse", "attn_multiscale", "attn_hybrid")
# Peer at the model level only: transformers' native sliding-window mask (no sinks), same window.
MODEL_PEERS = ("attn_native_sliding",)
SMOKE_PARAMS = {  # windows that fit the smoke sizes (the defaults are 512-token windows)
    "attn_sliding": {"window_size": 32},
    "attn_native_sliding": {"window_size": 32},
    "attn_sparse": {"block": 16, "local_blocks": 2, "stride": 4},
    "attn_multiscale": {"window_size": 32, "block": 16, "levels": 2},
    "attn_hybrid": {"sub_params": {"attn_sliding": {"window_size": 32}}},
}


def timed(fn, repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Milliseconds per call, one number per repeat."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "p25_ms": q[0],
            "p75_ms": q[2], "repeats": len(ms)}


def versions(device: torch.device) -> dict:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda or ""}


def kernel_rows(args, device, dtype, dims) -> list[dict]:
    hq, hkv, d = dims
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    params = SMOKE_PARAMS if args.smoke else {}

    def run(phase, seq_len, mechanism, backend, fn, density=1.0, build_ms=None):
        row = {"part": "kernel", "phase": phase, "seq_len": seq_len, "mechanism": mechanism, "backend": backend,
               "density": density, "mask_build_ms": build_ms, "status": "ok", "error": ""}
        try:
            row.update(summary(timed(fn, args.repeats, args.warmup, device)))
        except torch.cuda.OutOfMemoryError as exc:
            row.update(status="oom", error=str(exc).splitlines()[0][:200])
        except Exception as exc:  # recorded, not hidden: one failing mechanism must not stop the rest
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        rows.append(row)
        print({k: row.get(k) for k in ("phase", "seq_len", "mechanism", "backend", "median_ms", "status")}, flush=True)

    for seq_len in args.prefill:
        if time.perf_counter() - args.t0 > args.budget_s:
            rows.append({"part": "kernel", "phase": "prefill", "seq_len": seq_len, "status": "skipped",
                         "error": f"time budget {args.budget_s:.0f}s reached"})
            continue
        try:
            q = torch.randn(1, hq, seq_len, d, device=device, dtype=dtype, generator=gen)
            k = torch.randn(1, hkv, seq_len, d, device=device, dtype=dtype, generator=gen)
            v = torch.randn(1, hkv, seq_len, d, device=device, dtype=dtype, generator=gen)
            k_rep, v_rep = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"part": "kernel", "phase": "prefill", "seq_len": seq_len, "status": "oom", "error": str(exc)[:200]})
            continue
        run("prefill", seq_len, "sdpa", "sdpa_flash" if device.type == "cuda" else "sdpa",
            lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True))
        causal = lambda b, h, qi, ki: ki >= 0  # noqa: E731 - pattern_attention adds causality itself
        cache: dict = {}
        run("prefill", seq_len, "flex_causal", "flex" if device.type == "cuda" else "dense",
            lambda: pattern_attention(q, k, v, None, causal, block_mask_cache=cache))
        for name in MECHANISMS:
            mech = make_mechanism(name, **params.get(name, {}))
            pattern = mech.cached_pattern(None, hq)
            cache = {}
            t = time.perf_counter()
            try:
                pattern_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], None, pattern)  # imports, first compile
                if device.type == "cuda":
                    pattern_attention(q, k, v, None, pattern, block_mask_cache=cache)
                    torch.cuda.synchronize()
                build_ms = (time.perf_counter() - t) * 1e3
            except Exception:
                build_ms = None  # the timed run below records the error
            run("prefill", seq_len, name, "flex" if device.type == "cuda" else "dense",
                lambda: pattern_attention(q, k, v, None, pattern, block_mask_cache=cache),
                density=mech.density(seq_len, hq), build_ms=build_ms)
        del q, k, v, k_rep, v_rep
        if device.type == "cuda":
            torch.cuda.empty_cache()

    kv_len = args.decode
    q = torch.randn(1, hq, 1, d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, hkv, kv_len, d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(1, hkv, kv_len, d, device=device, dtype=dtype, generator=gen)
    run("decode", kv_len, "sdpa", "sdpa", lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    for name in MECHANISMS:
        mech = make_mechanism(name, **params.get(name, {}))
        pattern = mech.cached_pattern(None, hq)
        run("decode", kv_len, name, "gather", lambda: pattern_attention(q, k, v, None, pattern),
            density=mech.density(kv_len, hq))
    return rows


def model_mechanism(name: str, params: dict):
    if name == "attn_native_sliding":
        from optim.attn_native_sliding import NativeSlidingWindowAttention

        return NativeSlidingWindowAttention(**params)
    return make_mechanism(name, **params)


def model_backend(mech, device) -> str:
    if mech.name == "attn_native_sliding":  # transformers' own mask, run by the model's SDPA
        return "model_sdpa_sliding_mask"
    return "model_" + ("flex" if device.type == "cuda" else "dense")


def model_rows(args, device, dtype) -> list[dict]:
    """2-layer Llama-3.1-8B prefill (base model, no logits): mechanism attached vs plain SDPA."""
    from transformers import AutoModel

    from ollm_bench.gpu.decode_bench import llama31_8b_config, tiny_configs

    config = tiny_configs()["llama_tiny"] if args.smoke else llama31_8b_config(layers=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=dtype).to(device).eval()
    params = SMOKE_PARAMS if args.smoke else {}
    rows = []
    for seq_len in args.model_prefill:
        ids = torch.randint(0, config.vocab_size, (1, seq_len), device=device)
        for name in ("sdpa",) + MECHANISMS + MODEL_PEERS:
            if time.perf_counter() - args.t0 > args.budget_s:
                rows.append({"part": "model", "phase": "prefill", "seq_len": seq_len, "mechanism": name,
                             "status": "skipped", "error": f"time budget {args.budget_s:.0f}s reached"})
                continue
            mech = None if name == "sdpa" else model_mechanism(name, params.get(name, {}))
            row = {"part": "model", "phase": "prefill", "seq_len": seq_len, "mechanism": name,
                   "backend": "model_sdpa" if mech is None else model_backend(mech, device),
                   "density": 1.0 if mech is None or not hasattr(mech, "density")
                   else mech.density(seq_len, config.num_attention_heads),
                   "status": "ok", "error": ""}
            try:
                if mech is not None:
                    mech.attach(model, seq_len=seq_len)
                with torch.no_grad():
                    row.update(summary(timed(lambda: model(ids, use_cache=False), args.repeats, args.warmup, device)))
            except torch.cuda.OutOfMemoryError as exc:
                row.update(status="oom", error=str(exc).splitlines()[0][:200])
            except Exception as exc:
                row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            finally:
                if mech is not None:
                    mech.detach(model)
            rows.append(row)
            print({k: row.get(k) for k in ("part", "seq_len", "mechanism", "median_ms", "status")}, flush=True)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_sdpa = median of the SDPA row of the same part/phase/length / this row's median."""
    base = {(r["part"], r["phase"], r["seq_len"]): r.get("median_ms") for r in rows if r.get("mechanism") == "sdpa"}
    for r in rows:
        b, m = base.get((r.get("part"), r.get("phase"), r.get("seq_len"))), r.get("median_ms")
        r["speedup_vs_sdpa"] = b / m if b and m else None


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description="attention mechanisms vs full SDPA (C12/C13)")
    ap.add_argument("--out", required=True, help="directory for attention_gpu.csv")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, seconds")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-model", action="store_true", help="skip the 2-layer model part")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip remaining configs after this many seconds")
    args = ap.parse_args(argv)
    args.t0 = time.perf_counter()
    if args.smoke:
        device, dtype, dims = torch.device("cpu"), torch.float32, (4, 2, 16)
        args.prefill, args.decode, args.model_prefill = [96, 200], 200, [96]
        args.repeats, args.warmup = min(args.repeats, 5), 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke for the CPU check")
        device, dtype, dims = torch.device("cuda"), torch.bfloat16, (32, 8, 128)
        args.prefill, args.decode, args.model_prefill = [8192, 32768, 65536], 32768, [8192, 32768]
    rows = kernel_rows(args, device, dtype, dims)
    if not args.no_model:
        rows += model_rows(args, device, dtype)
    add_speedups(rows)
    meta = versions(device)
    for r in rows:
        r.update(meta, dtype=str(dtype).replace("torch.", ""), q_heads=dims[0], kv_heads=dims[1], head_dim=dims[2])
    import pandas as pd

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "attention_gpu.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    print(f"wrote {path} ({len(rows)} rows) in {time.perf_counter() - args.t0:.0f}s")
    return path


if __name__ == "__main__":
    main()
